"""The SR degradation: bicubic resampling of image batches, the one place SR training, the SR bench and
the loss sensitivity degradations (:func:`aeutils.sensitivity.degrade`) resample, so "x4 bicubic LR"
means the same thing in all of them. Downscaling is antialiased (``F.interpolate(..., antialias=True)``, as PIL/OpenCV-area
resizing would be); upscaling is plain bicubic; ``align_corners=False`` throughout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: the super-resolution factor: LR inputs are 1/SCALE of the HR side (~2 um/px from 0.5 um/px)
SCALE = 4
#: the :data:`aeutils.scale.FILTERS` filter whose slide reads match :func:`downscale` (PIL's antialiased
#: bicubic: 0.1 grey levels mean, 2 max from torch's x4 on prostate tissue; Lanczos, the reading default,
#: differs by 1.3 mean, 15 max): ``sr apply`` reads a resampled level with it, so the generator sees the
#: degradation it was trained on
SLIDE_FILTER = "bicubic"


def bicubic_down(x: torch.Tensor, size: tuple[int, int], *, clamp: bool = True) -> torch.Tensor:
    """Antialiased bicubic downscale of Nx3xHxW (values in [0, 1]) to Nx3x``size`` pixels; bicubic
    overshoots, so ``clamp`` (default) clips the result to [0, 1]."""
    y = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return y.clamp(0, 1) if clamp else y


def bicubic_up(
    x: torch.Tensor, *, scale: int | None = None, size: tuple[int, int] | None = None, clamp: bool = True
) -> torch.Tensor:
    """Bicubic upscale of Nx3xhxw by an integer ``scale`` (-> Nx3x(scale*h)x(scale*w)) or to ``size``
    pixels (exactly one of the two); ``clamp`` (default) clips the result to [0, 1]."""
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale= or size=")
    if scale is not None:
        y = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    else:
        y = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    return y.clamp(0, 1) if clamp else y


def downscale(hr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """LR input for ``hr`` (Nx3xHxW in [0, 1], H and W multiples of ``scale``): bicubic, antialiased,
    Nx3x(H/scale)x(W/scale), clamped to [0, 1]."""
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} px is not a multiple of the scale {scale}")
    return bicubic_down(hr, (h // scale, w // scale))


def upscale_bicubic(lr: torch.Tensor, scale: int = SCALE, *, clamp: bool = True) -> torch.Tensor:
    """The baseline: bicubic upsampling, Nx3xhxw -> Nx3x(scale*h)x(scale*w), clamped to [0, 1]
    (``clamp=False``: unclamped, as :class:`SRNet` adds its residual to it)."""
    return bicubic_up(lr, scale=scale, clamp=clamp)
