"""The content-loss bench's x4 network: shapes, size contracts, and that a few training steps reduce the loss."""
from __future__ import annotations

import pytest
import torch

from aeutils.losses import EncodingLoss
from aeutils.model import Autoencoder, AutoencoderConfig
from aeutils.metrics import psnr
from aeutils.sr.network import CONTENT, SRNet, downscale, train_sr, upscale_bicubic

WEIGHT = 0.03  # the content term of the same order as the pixel term on these images


def _smooth_patches(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Textured but learnable images: low-frequency noise upsampled (so x4 SR has something to gain)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def test_shapes_and_size_contracts():
    hr = torch.rand(2, 3, 48, 48)
    lr = downscale(hr)
    assert lr.shape == (2, 3, 12, 12) and 0 <= lr.min() and lr.max() <= 1
    assert upscale_bicubic(lr).shape == hr.shape
    net = SRNet(channels=8, n_blocks=1)
    assert net(lr).shape == hr.shape
    with pytest.raises(ValueError, match="multiple"):
        downscale(torch.rand(1, 3, 50, 50))
    with pytest.raises(ValueError, match="Nx3xhxw"):
        net(torch.rand(3, 12, 12))


def test_untrained_net_is_bicubic():
    lr = torch.rand(1, 3, 10, 10)
    torch.testing.assert_close(SRNet(channels=8, n_blocks=1).eval()(lr), upscale_bicubic(lr))


def test_one_bicubic_everywhere_matches_plain_interpolate():
    """sr and loss.degrade resample through aeutils.sr.degrade; values equal the direct F.interpolate calls."""
    from torch.nn.functional import interpolate

    from aeutils.sensitivity import degrade
    from aeutils.sr.degrade import bicubic_up

    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    lr = interpolate(x, size=(12, 12), mode="bicubic", antialias=True, align_corners=False)
    assert torch.equal(downscale(x), lr.clamp(0, 1))
    up = interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.equal(upscale_bicubic(lr), up.clamp(0, 1)) and torch.equal(upscale_bicubic(lr, clamp=False), up)
    y = x[:, :, :41, :41]
    small = interpolate(y, size=(14, 14), mode="bicubic", antialias=True, align_corners=False)  # 41 / 3, rounded
    back = interpolate(small, size=(41, 41), mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.equal(degrade(y, "down-up", 3.0, 4), back[:, :, 4:-4, 4:-4])
    with pytest.raises(ValueError, match="exactly one"):
        bicubic_up(lr)


@pytest.mark.parametrize("loss", ["mse", CONTENT])
def test_few_steps_reduce_loss(loss):
    patches = _smooth_patches(8, 32)
    enc = EncodingLoss(model=Autoencoder(AutoencoderConfig(widths=(8, 4, 2), n_blocks=1))) if loss != "mse" else None
    run = train_sr(loss=loss, steps=25, seed=0, patches=patches, batch_size=4, channels=8, n_blocks=1,
                   lr=3e-3, content_loss=enc, content_weight=WEIGHT, device="cpu", log_every=5)
    assert run.history[-1]["step"] == 25 and not run.model.training
    assert (run.history[0]["encoding"] > 0) == (loss == CONTENT)

    def objective(out: torch.Tensor) -> float:  # the training objective on all training patches
        value = torch.nn.functional.mse_loss(out, patches)
        if enc is not None:
            value = value + WEIGHT * enc(out, patches)
        return value.item()

    lr = downscale(patches)
    with torch.no_grad():
        # the net starts as bicubic upsampling, so this is the objective before training
        assert objective(run.model(lr)) < objective(upscale_bicubic(lr))
        held_out = _smooth_patches(2, 32, seed=1)
        assert psnr(run.model(downscale(held_out)).clamp(0, 1), held_out).shape == (2,)


def test_same_seed_same_result():
    patches = _smooth_patches(4, 16)
    a = train_sr(steps=3, seed=3, patches=patches, batch_size=2, channels=4, n_blocks=1, device="cpu")
    b = train_sr(steps=3, seed=3, patches=patches, batch_size=2, channels=4, n_blocks=1, device="cpu")
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb)
    with pytest.raises(ValueError, match="loss must be"):
        train_sr(loss="vgg", steps=1, patches=patches, device="cpu")
    with pytest.raises(ValueError, match="content_loss"):
        train_sr(loss=CONTENT, steps=1, patches=patches, device="cpu")
