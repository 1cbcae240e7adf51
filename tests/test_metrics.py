"""aeutils.metrics: per-image PSNR/SSIM agree with scikit-image's independent implementation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from aeutils.metrics import psnr, ssim


def _pair(n: int = 3, side: int = 33, noise: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(n, 3, side, side, generator=g)
    # different noise levels per image so per-image values differ
    scale = torch.linspace(0.02, noise, n).view(n, 1, 1, 1)
    pred = (target + scale * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return pred, target


def test_psnr_per_image_matches_skimage() -> None:
    pred, target = _pair()
    got = psnr(pred, target)
    assert got.shape == (3,)
    for i in range(3):
        ref = peak_signal_noise_ratio(target[i].numpy(), pred[i].numpy(), data_range=1.0)
        assert got[i].item() == pytest.approx(ref, abs=1e-3)
    assert got[0] > got[1] > got[2]  # less noise, higher PSNR


def test_ssim_per_image_matches_skimage() -> None:
    pred, target = _pair()
    got = ssim(pred, target)
    assert got.shape == (3,)
    for i in range(3):
        ref = structural_similarity(
            target[i].permute(1, 2, 0).numpy(), pred[i].permute(1, 2, 0).numpy(), data_range=1.0,
            channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
        # torchmetrics averages over the valid (unpadded) region like skimage; allow a small tolerance
        assert got[i].item() == pytest.approx(ref, abs=2e-2)
    assert got[0] > got[2]


def test_identical_images() -> None:
    x = torch.rand(2, 3, 21, 21)
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)


def test_single_image_and_low_precision_inputs() -> None:
    pred, target = _pair(1)
    assert psnr(pred[0], target[0]).shape == (1,)
    half = psnr(pred.bfloat16(), target.bfloat16())
    assert half.dtype == torch.float32 and np.isfinite(half.item())


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.rand(1, 3, 9, 9), torch.rand(1, 3, 9, 11))
