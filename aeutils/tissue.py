"""Tissue masks on a low-resolution thumbnail, and the tissue fraction of rectangles (grid cells).

H&E tissue is coloured (pink/purple) while glass is white-grey and out-of-slide padding is black,
so the mask thresholds the HSV *saturation* with Otsu's method (scikit-image), clipped to a range
(0.07..0.2) so that a blank slide gives an empty mask and an all-tissue one a full mask, then removes
small specks and fills small holes.

Your own mask (:func:`user_mask`, ``extract(mask=...)``, ``--mask`` / ``--mask-dir``) replaces the
detection: an H x W array or a PNG/TIFF file, nonzero = tissue, covering the whole slide at any
resolution (its scale to level 0 is the shape ratio), as histolab's ``extraction_mask`` and
TIAToolbox's ``input_mask``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aeutils.errors import PatchError, one_line
from aeutils.io import missing_reason

__all__ = ["TissueMask", "saturation", "tissue_mask", "detect_tissue", "read_mask", "mask_for_slide", "user_mask",
           "MASK_SUFFIXES"]

#: File names a mask folder is searched for, in this order: ``<slide stem><suffix>``.
MASK_SUFFIXES = (".png", ".tif", ".tiff")
#: A mask's aspect ratio may differ from its slide's by this fraction (or one mask pixel of rounding).
ASPECT_TOLERANCE = 0.02
#: Fewest mask pixels a side.
MIN_MASK_SIDE = 8


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask of a thumbnail and its scale.

    Attributes:
        mask: H x W bool, True = tissue.
        scale: ``(sx, sy)`` mask pixels per level-0 pixel (mask width / slide width, height / height).
        threshold: the saturation threshold used (0..1; None for your own mask).
        source: ``"auto"`` (detected on a thumbnail), or where your mask came from (its file, ``"array"``).
    """

    mask: np.ndarray
    scale: tuple[float, float]
    threshold: float | None
    source: str = "auto"

    def _integral(self) -> np.ndarray:
        cached = self.__dict__.get("_sat")
        if cached is None:
            # int32 while it cannot overflow: half the memory for a large mask of your own
            dt = np.int32 if self.mask.size < 2**31 else np.int64
            cached = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype=dt)
            cached[1:, 1:] = self.mask.cumsum(0, dtype=dt).cumsum(1, dtype=dt)
            object.__setattr__(self, "_sat", cached)
        return cached

    def fraction(self, x: float, y: float, w: float, h: float) -> float:
        """Fraction (0..1) of the level-0 rectangle ``[x, x+w) x [y, y+h)`` covered by tissue.

        The rectangle is mapped to mask pixels (rounded, at least one pixel); outside the mask counts
        as no tissue.
        """
        return float(self.fractions(np.array([x]), np.array([y]), w, h)[0])

    def fractions(self, xs: np.ndarray, ys: np.ndarray, w: float, h: float) -> np.ndarray:
        """Vectorised :meth:`fraction` for many rectangles of the same level-0 size ``w x h``."""
        sat = self._integral()
        H, W = self.mask.shape
        sx, sy = self.scale
        x0 = np.floor(np.asarray(xs, dtype=np.float64) * sx + 0.5).astype(np.int64)
        y0 = np.floor(np.asarray(ys, dtype=np.float64) * sy + 0.5).astype(np.int64)
        x1 = np.maximum(np.floor((np.asarray(xs, dtype=np.float64) + w) * sx + 0.5).astype(np.int64), x0 + 1)
        y1 = np.maximum(np.floor((np.asarray(ys, dtype=np.float64) + h) * sy + 0.5).astype(np.int64), y0 + 1)
        area = (x1 - x0) * (y1 - y0)
        cx0, cx1 = np.clip(x0, 0, W), np.clip(x1, 0, W)
        cy0, cy1 = np.clip(y0, 0, H), np.clip(y1, 0, H)
        inside = sat[cy1, cx1] - sat[cy0, cx1] - sat[cy1, cx0] + sat[cy0, cx0]
        return inside / area


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` of an H x W x 3 uint8 image, float32 in [0, 1] (0 where max is 0).

    Same values as ``skimage.color.rgb2hsv(rgb)[..., 1]`` (to float32 rounding; tests/test_tissue.py checks).
    """
    # Not rgb2hsv: detect_tissue's default thumbnail is 2048 px a side, not small. Measured on the sample
    # slide's 2048 x 1532 thumbnail (2 shared cores): this 0.27-0.35 s, rgb2hsv(...)[..., 1] 1.3-2.3 s (it
    # also computes hue and value in float64), against 1.9 s for all of detect_tissue: it would about
    # double the per-slide tissue step for the same mask (same Otsu threshold).
    hi = rgb.max(axis=2)
    lo = rgb.min(axis=2)
    out = np.zeros(hi.shape, dtype=np.float32)
    np.divide((hi - lo).astype(np.float32), hi, out=out, where=hi > 0)
    return out


def tissue_mask(
    rgb: np.ndarray,
    *,
    min_saturation: float = 0.07,
    max_saturation: float = 0.2,
    min_object_fraction: float = 1e-4,
    hole_fraction: float = 1e-3,
) -> tuple[np.ndarray, float]:
    """Tissue mask of an RGB thumbnail (H x W x 3 uint8): returns ``(mask H x W bool, threshold)``.

    Otsu on HSV saturation, clipped to ``[min_saturation, max_saturation]`` (blank glass gives an empty
    mask, a slide that is all tissue a full one: Otsu alone would split either in two); objects smaller than
    ``min_object_fraction`` of the image are removed and holes smaller than ``hole_fraction`` filled.
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {rgb.shape}")
    sat = saturation(rgb)
    # Nearly black pixels (out-of-slide padding, pen) have unreliable saturation: not tissue.
    dark = rgb.max(axis=2) < 30
    sat = np.where(dark, 0.0, sat)
    try:
        otsu = float(threshold_otsu(sat))
    except ValueError:  # constant image
        otsu = 1.0
    threshold = min(max(otsu, min_saturation), max_saturation)
    mask = sat > threshold
    n = mask.size
    min_obj = max(1, int(round(min_object_fraction * n)))
    max_hole = max(1, int(round(hole_fraction * n)))
    if mask.any():
        mask = _skimage_size_filter(remove_small_objects, mask, min_obj)
        mask = _skimage_size_filter(remove_small_holes, mask, max_hole)
    return mask.astype(bool), threshold


def _skimage_size_filter(func: "object", mask: np.ndarray, size: int) -> np.ndarray:
    """Call skimage's remove_small_objects/holes removing regions smaller than ``size`` pixels on any version."""
    try:  # scikit-image >= 0.26: max_size removes regions of at most max_size pixels
        return func(mask, max_size=size - 1)  # type: ignore[operator]
    except TypeError:  # older: min_size / area_threshold remove regions smaller than the value
        return func(mask, size)  # type: ignore[operator]


def detect_tissue(slide: "object", max_side: int = 2048) -> tuple[np.ndarray, TissueMask]:
    """Thumbnail (at most ``max_side`` pixels a side) and :class:`TissueMask` of an open :class:`~aeutils.slides.Slide`."""
    thumb = slide.thumbnail(max_side)  # type: ignore[attr-defined]
    mask, threshold = tissue_mask(thumb)
    w0, h0 = slide.dimensions  # type: ignore[attr-defined]
    scale = (thumb.shape[1] / w0, thumb.shape[0] / h0)
    return thumb, TissueMask(mask=mask, scale=scale, threshold=threshold)


# ---------------------------------------------------------------------------------------------------
# your own mask


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """H x W bool of a mask image file (PNG, TIFF, or anything Pillow reads): nonzero = tissue.

    Colour images count a pixel as tissue where any colour channel is nonzero (alpha is ignored);
    multi-page TIFFs use their first page. Raises :class:`PatchError` naming the file if it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        why = missing_reason(path)
        raise PatchError(f"{path}: " + ("no such mask file" if why in (None, "no such file") else why)
                         + (" (a folder, not a mask file)" if path.is_dir() else ""))
    arr: Any = None
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            arr = tifffile.imread(path, key=0)
        except ImportError:
            arr = None
        except Exception as exc:
            raise PatchError(f"{path}: cannot read the mask ({one_line(exc)}); "
                             f"expected a PNG or TIFF image") from None
    if arr is None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                if im.mode == "P":
                    im = im.convert("RGBA")
                if im.mode in ("RGBA", "LA", "PA"):
                    im = im.convert("RGB" if im.mode == "RGBA" else "L")
                arr = np.asarray(im)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise PatchError(f"{path}: cannot read the mask ({one_line(exc)}); "
                             f"expected a PNG or TIFF image") from None
    arr = np.asarray(arr)
    _check_finite(arr, str(path))
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., :3].any(axis=2)
    if arr.ndim != 2:
        raise PatchError(f"{path}: a mask must be one 2-D image (H x W), got shape {arr.shape}")
    return arr != 0


def _check_finite(arr: np.ndarray, source: str) -> None:
    """:class:`PatchError` for a mask holding NaN or inf (which would count as tissue everywhere they are)."""
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise PatchError(f"{source}: the mask holds {bad} NaN or infinite values; give 0 for glass and "
                         f"nonzero for tissue")


def mask_for_slide(mask: Any, name: str) -> Any:
    """The mask of slide ``name`` among what a caller gave: a dict name -> mask, a folder of
    ``<name>.png`` (or ``.tif``/``.tiff``), or one slide's mask (an array or a file) as is.

    Raises :class:`PatchError` naming the folder (and the file it expected) when the slide has no mask.
    """
    if isinstance(mask, dict):
        if name not in mask:
            raise PatchError(f"no mask for slide {name} (the masks given are for {', '.join(sorted(mask)) or 'none'})")
        return mask[name]
    if isinstance(mask, (str, os.PathLike)) and Path(mask).is_dir():
        for suffix in MASK_SUFFIXES:
            candidate = Path(mask) / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
            if os.path.islink(candidate):  # a link to nowhere, or a loop: say so, not "no mask"
                raise PatchError(f"{candidate}: the mask of slide {name} is a {missing_reason(candidate)}")
        raise PatchError(f"{Path(mask) / (name + '.png')}: no mask for slide {name} in {mask} "
                         f"(masks are named <slide stem>.png)")
    return mask


def _same_file(a: Any, b: Any) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, TypeError, ValueError):
        return False


def user_mask(mask: Any, dimensions: tuple[int, int], *, slide: Any = None) -> TissueMask:
    """A :class:`TissueMask` from your own mask of a slide whose level 0 is ``dimensions`` = (width, height).

    ``mask``: an H x W array (nonzero = tissue) or a mask file (:func:`read_mask`), covering the whole
    slide at any resolution: its scale to level 0 is ``(W / width, H / height)``. Raises
    :class:`PatchError` naming the mask (and ``slide``) and both shapes when its aspect ratio differs from
    the slide's by more than 2 % (and more than one mask pixel of rounding), or when it is under
    8 px a side.
    """
    if isinstance(mask, (str, os.PathLike)):
        source = str(mask)
        if slide is not None and _same_file(mask, slide):
            raise PatchError(f"{mask}: the mask is the slide itself; give a mask image of it (nonzero = tissue, "
                             f"0 = glass)")
        arr = read_mask(mask)
    else:
        source = "array"
        arr = np.asarray(mask)
        if arr.ndim != 2:
            raise PatchError(f"mask array: a mask must be 2-D (H x W), got shape {arr.shape}")
        _check_finite(arr, "mask array")
        arr = arr.astype(bool) if arr.dtype != bool else arr
    mh, mw = arr.shape
    w0, h0 = int(dimensions[0]), int(dimensions[1])
    of = f" for slide {slide}" if slide is not None else ""
    shapes = f"mask {mw} x {mh} px, slide {w0} x {h0} px (width x height)"
    if min(mh, mw) < MIN_MASK_SIDE:
        raise PatchError(f"{source}: mask too small{of}: {shapes}; give at least {MIN_MASK_SIDE} px a side")
    want_h, want_w = h0 * mw / w0, w0 * mh / h0  # the other side at each side's scale
    if (abs(mh - want_h) > max(1.0, ASPECT_TOLERANCE * want_h)
            and abs(mw - want_w) > max(1.0, ASPECT_TOLERANCE * want_w)):
        raise PatchError(f"{source}: mask does not match the slide's shape{of}: {shapes}, aspect ratios "
                         f"{mw / mh:.3f} vs {w0 / h0:.3f}; a mask covers the whole slide at any resolution")
    return TissueMask(mask=arr, scale=(mw / w0, mh / h0), threshold=None, source=source)
