"""Image-quality metrics for reconstructions: per-image PSNR and SSIM (torchmetrics, not hand-written).

Both take ``pred`` and ``target`` as Nx3xHxW float tensors of RGB in [0, 1] (``data_range`` 1.0)
and return a length-N float tensor, one value per image, so callers can average, take medians or
plot distributions. PSNR is in dB; SSIM is unitless in [-1, 1] (Gaussian window 11, sigma 1.5).
"""
from __future__ import annotations

import torch

__all__ = ["psnr", "ssim"]


def _check(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim == 3:  # a single CxHxW image
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    if pred.ndim != 4:
        raise ValueError(f"expected NxCxHxW images in [0, 1], got shape {tuple(pred.shape)}")
    # metrics in float32 on the caller's device (bf16/fp16 outputs of autocast included)
    return pred.detach().float(), target.detach().float()


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB (data range 1.0). Shape N (inputs NxCxHxW).

    Identical images give ``inf``.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    p, t = _check(pred, target)
    return peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (Gaussian 11x11 window, sigma 1.5, data range 1.0). Shape N.

    Images must be at least 11 pixels on each side.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, t = _check(pred, target)
    return structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")
