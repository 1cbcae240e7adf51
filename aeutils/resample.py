"""Bicubic resampling of image batches: the one place the SR demo (:mod:`aeutils.sr`) and the loss
sensitivity degradations (:func:`aeutils.sensitivity.degrade`) resample, so "x4 bicubic LR" means the same
thing in both. Downscaling is antialiased (``F.interpolate(..., antialias=True)``, as PIL/OpenCV-area
resizing would be); upscaling is plain bicubic; ``align_corners=False`` throughout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
