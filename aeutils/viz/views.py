"""Encoding views: numbers -> display arrays, and the scale text beside them.

An encoding is an unbounded float map; :func:`encoding_view` maps it to [0, 1] for display (raw
min-max, percentile stretch, histogram equalisation, CLAHE); :func:`describe_scale` says what a
shape means in pixels and microns. No figures here (:mod:`aeutils.viz.figures`), no torch import at
module level.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: the encoding views understood by :func:`encoding_view`
VIEWS: tuple[str, ...] = ("raw", "stretch", "equalize", "clahe")
VIEW_LABELS: dict[str, str] = {
    "raw": "raw (min-max)",
    "stretch": "linear stretch (percentiles)",
    "equalize": "histogram equalisation",
    "clahe": "CLAHE (adaptive equalisation)",
}
#: input pixels per encoding pixel (two stride-2 convolutions)
ENCODING_STRIDE = 4
#: pixel stride of each encoder tap (:data:`aeutils.model.TAPS`) relative to the input
TAP_STRIDE: dict[str, int] = {"stage1": 2, "stage2": 4, "stage3": 4, "latent": 4}


def __getattr__(name: str) -> Any:
    """``STAGE_STRIDE``: the old name of :data:`TAP_STRIDE` (``DeprecationWarning``)."""
    if name == "STAGE_STRIDE":
        import warnings

        warnings.warn("aeutils.viz STAGE_STRIDE is deprecated: use TAP_STRIDE", DeprecationWarning, stacklevel=2)
        return TAP_STRIDE
    raise AttributeError(f"module 'aeutils.viz.views' has no attribute {name!r}")
_EQ_BINS = 4096


# --------------------------------------------------------------------------------------------- views
def _as_2d(z: Any) -> np.ndarray:
    """A single map as a float64 HxW array (accepts HxW or 1xHxW, numpy or torch)."""
    if hasattr(z, "detach"):
        z = z.detach().float().cpu().numpy()
    a = np.asarray(z, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected one HxW (or 1xHxW) map, got shape {a.shape}")
    return a


def encoding_view(z: Any, view: str = "raw", low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """One encoding (or feature map) ``z`` (HxW or 1xHxW floats) as an HxW float64 image in [0, 1].

    Views:
        ``raw``       min-max: the lowest value black, the highest white (linear, nothing clipped).
        ``stretch``   linear contrast stretch: the ``low``-th percentile black, the ``high``-th white,
                      values outside clipped (``skimage.exposure.rescale_intensity``).
        ``equalize``  histogram equalisation (``skimage.exposure.equalize_hist``, 4096 bins): a flat
                      histogram, the lowest value black and the highest white.
        ``clahe``     contrast-limited adaptive equalisation (``skimage.exposure.equalize_adapthist``,
                      tiles of 1/8 of the side) of the min-max view.
    A constant map gives all zeros. ``low``/``high`` are percentiles in [0, 100] (only ``stretch``
    uses them).
    """
    from skimage import exposure

    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}: choose from {', '.join(VIEWS)}")
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles need 0 <= low < high <= 100, got low={low}, high={high}")
    a = _as_2d(z)
    lo, hi = float(a.min()), float(a.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("the map holds non-finite values")
    if hi <= lo:
        return np.zeros_like(a)
    if view == "raw":
        return (a - lo) / (hi - lo)
    if view == "stretch":
        p_lo, p_hi = np.percentile(a, [low, high])
        if p_hi <= p_lo:  # a (nearly) constant stretch window: fall back to min-max
            p_lo, p_hi = lo, hi
        return exposure.rescale_intensity(a, in_range=(float(p_lo), float(p_hi)), out_range=(0.0, 1.0))
    if view == "equalize":  # fine bins: an outlier must not squash everything else into one bin
        eq = exposure.equalize_hist(a, nbins=_EQ_BINS)
        return (eq - eq.min()) / (eq.max() - eq.min())
    return np.clip(exposure.equalize_adapthist((a - lo) / (hi - lo)), 0.0, 1.0)


def encoding_views(z: "torch.Tensor", view: str = "raw", low: float = 2.0, high: float = 98.0) -> "torch.Tensor":
    """:func:`encoding_view` of each map of a batch ``z`` (Nx1xhxw): an Nx1xhxw float32 tensor in
    [0, 1]. Each encoding is scaled on its own (its own min/max, percentiles, histogram)."""
    import torch

    if z.ndim != 4 or z.shape[1] != 1:
        raise ValueError(f"expected an Nx1xhxw batch of encodings, got shape {tuple(z.shape)}")
    out = [torch.from_numpy(encoding_view(m, view, low, high)).float() for m in z[:, 0].detach().cpu()]
    return torch.stack(out).unsqueeze(1)


# --------------------------------------------------------------------------------------------- scale
def describe_scale(shape: Sequence[int], mpp: float | None, stride: int = 1) -> str:
    """'3x181x181 px, 0.499 \u00b5m/px (90 \u00b5m wide)' for a CxHxW item at ``mpp * stride`` microns per
    pixel (the width is ``shape[-1]`` pixels, whole microns); 'pixel size unknown' when ``mpp`` is None."""
    dims = "x".join(str(int(s)) for s in shape)
    if mpp is None:
        return f"{dims} px, pixel size unknown"
    px = mpp * stride
    side = px * int(shape[-1])
    return f"{dims} px, {px:.4g} \u00b5m/px ({side:.0f} \u00b5m wide)"


def two_line_scale(scale: str) -> str:
    """'3x181x181 px, 0.499 \u00b5m/px (90 \u00b5m wide)' -> shape and pixel size on two lines (panel titles)."""
    return scale.replace(", ", "\n", 1)
