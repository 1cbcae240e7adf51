"""The scale patches are read at: a pyramid level, and a resample factor when no level has the asked mpp.

One resolution rule shared by every command that reads slide pixels (``extract``, ``encode``):

* ``--level L`` (default 0): pixels of level ``L`` as they are (factor 1).
* ``--mpp M`` (microns per pixel): the level nearest ``M`` if it is within ``tolerance`` (relative,
  default 10 %); otherwise the nearest *finer* level, downsampled by ``factor = M / level_mpp`` with
  an antialiased filter (``--resample-filter``, :data:`FILTERS`): Lanczos by default, which keeps the
  detail of band-limited tissue (the same pixels as a careful per-patch ``read_region`` + PIL Lanczos);
  ``area`` (the mean over each output pixel's footprint) costs ~20 % less CPU per patch but blurs: on
  40x pyramids made by enlarging the bundled slides 2x (bicubic) it lost 0.15 (skin) to 1.2 dB
  (prostate) of median PSNR against the true pixels (``bench/extract.py`` prints the figures). A
  coarser level is never upsampled, and
  ``M`` finer than level 0 (beyond the tolerance) is an error.
* ``--assume-mpp A``: the slide's level-0 scale is ``A`` um/px whatever the file claims
  (``mpp_source = "assumed"``). Without it the file's own mpp is used (``"slide"``) when it is
  plausible (0.05 - 20 um/px); a missing or implausible mpp with ``--mpp`` is one
  :class:`~aeutils.errors.SlideError` naming the file, its claim and ``--assume-mpp X`` as the way out.

Coordinates: an *output pixel* is a pixel at the chosen scale; output pixel ``(ox, oy)`` has its
top-left at level-0 ``(ox * downsample, oy * downsample)`` where ``downsample = level downsample *
factor``. The output image of the whole slide is ``output_dimensions`` pixels.

This module never imports torch.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from aeutils.errors import PatchError, SlideError

__all__ = [
    "MPP_RANGE", "DEFAULT_TOLERANCE", "FILTERS", "DEFAULT_FILTER", "ScaleChoice", "resolve_scale", "read_scaled",
    "resample_region", "resample_patches", "source_box", "add_scale_arguments", "scale_kwargs", "check_filter",
    "check_assume_mpp",
]

#: plausible level-0 microns per pixel (outside: the file's tag is wrong or missing)
MPP_RANGE = (0.05, 20.0)
#: a level within this relative distance of the asked mpp is used as is
DEFAULT_TOLERANCE = 0.1
#: resampling filters: name -> (PIL ``Image.Resampling`` member, kernel support radius in output pixels).
#: All are antialiased (PIL widens the kernel by the factor). ``bench/extract.py`` (x2 from 40x
#: pyramids of the bundled slides, 2 cores) measured, median PSNR per patch against the true pixels and
#: extract's CPU per patch end to end (prostate / skin): "lanczos" (3 lobes) the careful naive resample's
#: pixels exactly, 4.3 / 4.9 ms (the naive loop 10.4 / 8.9 ms); "bicubic" 1.5 / 0.5 dB lower, 4.0 / 4.4 ms
#: (for pipelines that want PIL's antialiased bicubic); "area" (the mean over each output pixel's
#: footprint, PIL ``BOX``) 1.2 / 0.15 dB lower, 3.5 / 3.8 ms. Of lanczos' ~4.3 ms, PIL's resize is ~1.35,
#: the PNG encoding ~0.9 and the JPEG tile decoding (4 level-0 pixels per output pixel) ~0.8.
#: PIL's hamming and bilinear are left out: they cost what area does and lost 0.7-5.7 dB.
FILTERS: dict[str, tuple[str, float]] = {
    "lanczos": ("LANCZOS", 3.0),
    "bicubic": ("BICUBIC", 2.0),
    "area": ("BOX", 0.5),
}
#: the filter extract, encode and read_scaled use unless told otherwise
DEFAULT_FILTER = "lanczos"


@dataclass(frozen=True)
class ScaleChoice:
    """Where pixels come from and how they are scaled.

    Attributes:
        level: the pyramid level read.
        factor: resample factor (>= 1; 1 = the level's pixels as they are): level pixels per output pixel.
        mpp: output microns per pixel, or ``None`` when the scale is unknown (no ``--mpp``, no usable tag).
        mpp_source: ``"slide"`` (the file's tag), ``"assumed"`` (``--assume-mpp``) or ``None``.
        level_downsample: level-0 pixels per pixel of ``level``.
        level_dimensions: ``(width, height)`` of ``level`` in its pixels.
        slide: the file's name (for messages).
        requested_mpp: the ``--mpp`` asked for, or ``None``.
        claimed_mpp: what the file claims at level 0 (``None`` if nothing), for messages.
        filter: the resampling filter (a key of :data:`FILTERS`; used only when ``factor`` > 1).
    """

    level: int
    factor: float
    mpp: float | None
    mpp_source: str | None
    level_downsample: float
    level_dimensions: tuple[int, int]
    slide: str = ""
    requested_mpp: float | None = None
    claimed_mpp: float | None = None
    filter: str = DEFAULT_FILTER

    @property
    def resampled(self) -> bool:
        """True when pixels are resampled (factor > 1)."""
        return self.factor != 1.0

    @property
    def downsample(self) -> float:
        """Level-0 pixels per output pixel (``level_downsample * factor``)."""
        return self.level_downsample * self.factor

    @property
    def output_dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of the whole slide in output pixels (level size / factor, floored)."""
        w, h = self.level_dimensions
        if not self.resampled:
            return (int(w), int(h))
        return (int(math.floor(w / self.factor + 1e-9)), int(math.floor(h / self.factor + 1e-9)))

    def describe(self) -> str:
        """One line: which level is read, at what mpp, resampled by what factor, and where the mpp comes from."""
        if self.mpp is None:
            why = ("records no microns per pixel" if self.claimed_mpp is None
                   else f"claims {self.claimed_mpp:g} um/px (implausible)")
            return (f"{self.slide}: level {self.level} pixels, scale unknown (the file {why}; "
                    f"no mpp in the manifest; --assume-mpp X sets it)")
        src = "from the slide" if self.mpp_source == "slide" else "assumed with --assume-mpp"
        lvl_mpp = self.mpp / self.factor
        if self.resampled:
            return (f"{self.slide}: read level {self.level} ({lvl_mpp:.4g} um/px) and downsampled "
                    f"x{self.factor:.4g} ({self.filter}) -> {self.mpp:.4g} um/px (level-0 mpp {src})")
        asked = ""
        if self.requested_mpp is not None and abs(self.mpp / self.requested_mpp - 1) > 1e-6:
            asked = f" for --mpp {self.requested_mpp:g} (within {_pct(self.mpp, self.requested_mpp)})"
        return f"{self.slide}: read level {self.level} at {self.mpp:.4g} um/px{asked}, not resampled (mpp {src})"


def _pct(a: float, b: float) -> str:
    return f"{100 * abs(a / b - 1):.1f} %"


def _plausible(mpp: float | None) -> bool:
    return mpp is not None and math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def resolve_scale(
    slide: Any,
    *,
    level: int | None = None,
    mpp: float | None = None,
    assume_mpp: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    filter: str | None = None,
) -> ScaleChoice:
    """Choose the level and resample factor for an open :class:`~aeutils.slides.Slide`.

    ``level`` (default 0) or ``mpp`` (target microns/pixel), not both; ``assume_mpp`` overrides the
    file's level-0 mpp; ``filter``: a key of :data:`FILTERS` (default :data:`DEFAULT_FILTER`). Raises
    :class:`PatchError` for contradictory or impossible options (no file involved) and :class:`SlideError`
    (naming the file) for a bad level, a missing/implausible mpp with ``mpp``, or an ``mpp`` finer than
    level 0 (that would need upsampling).
    """
    if mpp is not None and level is not None:
        raise PatchError("give either --level or --mpp, not both")
    filter = check_filter(filter)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise PatchError(f"--mpp must be a positive number of microns per pixel, got {mpp:g}")
    if not tolerance >= 0:
        raise PatchError(f"mpp tolerance must be >= 0, got {tolerance}")
    check_assume_mpp(assume_mpp)
    claimed = getattr(slide, "mpp", None)
    name = str(slide.path)
    if assume_mpp is not None:
        base, source = float(assume_mpp), "assumed"
    elif _plausible(claimed):
        base, source = float(claimed), "slide"
    else:
        base, source = None, None
    dss = [float(d) for d in slide.level_downsamples]
    common = dict(slide=name, claimed_mpp=claimed, filter=filter)
    if mpp is None:
        lvl = 0 if level is None else level
        slide.check_level(lvl)
        return ScaleChoice(lvl, 1.0, None if base is None else base * dss[lvl], source, dss[lvl],
                           tuple(slide.level_dimensions[lvl]), **common)
    if base is None:
        what = ("records no microns per pixel" if claimed is None
                else f"claims {claimed:g} um/px, outside the plausible {MPP_RANGE[0]:g}-{MPP_RANGE[1]:g} um/px")
        raise SlideError(f"{name}: --mpp {mpp:g} needs the slide's scale but the file {what}; "
                         f"if you know it, pass --assume-mpp X (level-0 microns per pixel, e.g. 0.5 at 20x)")
    mpps = [base * d for d in dss]
    near = min(range(len(mpps)), key=lambda i: abs(math.log(mpps[i] / mpp)))
    if abs(mpps[near] / mpp - 1) <= tolerance:
        return ScaleChoice(near, 1.0, mpps[near], source, dss[near], tuple(slide.level_dimensions[near]),
                           requested_mpp=mpp, **common)
    finer = [i for i in range(len(mpps)) if mpps[i] < mpp]
    if not finer:
        raise SlideError(f"{name}: --mpp {mpp:g} is finer than level 0 ({mpps[0]:.4g} um/px); "
                         f"upsampling is not done (ask for {mpps[0]:.4g} or coarser)")
    lvl = max(finer, key=lambda i: mpps[i])  # the coarsest level finer than the target
    return ScaleChoice(lvl, mpp / mpps[lvl], float(mpp), source, dss[lvl], tuple(slide.level_dimensions[lvl]),
                       requested_mpp=mpp, **common)


def check_filter(filter: str | None) -> str:
    """``filter`` (None: :data:`DEFAULT_FILTER`) if it is a key of :data:`FILTERS`; raises :class:`PatchError`."""
    name = DEFAULT_FILTER if filter is None else filter
    if name not in FILTERS:
        raise PatchError(f"--resample-filter must be one of {', '.join(FILTERS)}, got {filter!r}")
    return name


def check_assume_mpp(assume_mpp: float | None) -> None:
    """Raise :class:`PatchError` unless ``assume_mpp`` is None or a plausible level-0 mpp."""
    if assume_mpp is not None and not _plausible(float(assume_mpp)):
        raise PatchError(f"--assume-mpp {assume_mpp:g} is outside the plausible "
                         f"{MPP_RANGE[0]:g}-{MPP_RANGE[1]:g} um/px")


def _margin(choice: ScaleChoice) -> int:
    """Level pixels read beyond a region's edge so the filter sees its whole support."""
    support = FILTERS[choice.filter][1]
    return int(math.ceil(support * choice.factor)) + 1


def source_box(choice: ScaleChoice, x0: int, y0: int, w: int, h: int) -> tuple[int, int, int, int]:
    """Level pixels ``(lx0, ly0, lx1, ly1)`` (exclusive end, clipped to the level) that output pixels
    ``[x0, x0 + w) x [y0, y0 + h)`` are computed from (with the filter's margin)."""
    f, m = choice.factor, _margin(choice)
    lw, lh = choice.level_dimensions
    return (max(0, int(math.floor(x0 * f)) - m), max(0, int(math.floor(y0 * f)) - m),
            min(lw, int(math.ceil((x0 + w) * f)) + m), min(lh, int(math.ceil((y0 + h) * f)) + m))


def resample_region(choice: ScaleChoice, region: np.ndarray, lx0: int, ly0: int,
                    x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Output pixels ``[x0, x0+w) x [y0, y0+h)`` (h x w x 3 uint8) from ``region``, the level pixels
    whose top-left is level pixel ``(lx0, ly0)``.

    The result depends only on the level pixels in :func:`source_box` of the output region, so a
    patch cut from a strip equals the patch read alone (the crop below is the same whatever the strip).
    """
    from PIL import Image

    if not choice.resampled:
        return np.ascontiguousarray(region[y0 - ly0:y0 - ly0 + h, x0 - lx0:x0 - lx0 + w])
    bx0, by0, bx1, by1 = source_box(choice, x0, y0, w, h)
    crop = np.ascontiguousarray(region[by0 - ly0:by1 - ly0, bx0 - lx0:bx1 - lx0])
    f = choice.factor
    box = (x0 * f - bx0, y0 * f - by0, (x0 + w) * f - bx0, (y0 + h) * f - by0)
    flt = getattr(Image.Resampling, FILTERS[choice.filter][0])
    return np.asarray(Image.fromarray(crop, "RGB").resize((int(w), int(h)), flt, box=box))


def _shared_image_exact(choice: ScaleChoice, region: np.ndarray) -> bool:
    """Whether patches resampled straight from one image of the whole ``region`` (boxes in its
    coordinates) are bit-identical to :func:`resample_region`'s (each from a crop of its own
    :func:`source_box`).

    PIL takes a box as C floats and places output pixel ``i`` at ``box0 + (i + 0.5) * scale``
    (doubles). When the factor is a multiple of 1/256 and the region under 2**14 pixels a side, every one
    of these numbers is exact, so a box shifted by the crop's whole-pixel offset gives the same filter
    taps and weights; the kernel is clipped only at the slide's edge, where crop and region end alike.
    Other factors (e.g. 0.5 / 0.2527) would differ in the last bit of a weight: those keep the crops.
    """
    f = choice.factor
    return float(f * 256).is_integer() and max(region.shape[:2]) < 2**14


def resample_patches(choice: ScaleChoice, region: np.ndarray, lx0: int, ly0: int,
                     origins: list[tuple[int, int]], w: int, h: int) -> Iterator[np.ndarray]:
    """Each patch ``[x0, x0+w) x [y0, y0+h)`` (output pixels, ``(x0, y0)`` in ``origins``) of ``region``
    (level pixels, top-left level pixel ``(lx0, ly0)``), as h x w x 3 uint8: exactly what
    :func:`resample_region` gives for each, cheaper for a strip of patches.

    When the factor allows (:func:`_shared_image_exact`), ``region`` becomes one PIL image and each
    patch is resized from it with its box (no per-patch crop, copy and conversion); otherwise, and at
    factor 1, patch by patch with :func:`resample_region`.
    """
    if not choice.resampled or not _shared_image_exact(choice, region):
        for x0, y0 in origins:
            yield resample_region(choice, region, lx0, ly0, x0, y0, w, h)
        return
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(region), "RGB")
    flt = getattr(Image.Resampling, FILTERS[choice.filter][0])
    f = choice.factor
    for x0, y0 in origins:
        box = (x0 * f - lx0, y0 * f - ly0, (x0 + w) * f - lx0, (y0 + h) * f - ly0)
        yield np.asarray(im.resize((int(w), int(h)), flt, box=box))


def read_scaled(slide: Any, choice: ScaleChoice, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Output pixels ``[x0, x0+w) x [y0, y0+h)`` of ``slide`` at ``choice``'s scale: h x w x 3 uint8 RGB.

    ``x0, y0, w, h`` are **output pixels** (see the module docstring; at factor 1 these are pixels of
    ``choice.level``, i.e. level-0 ``x0 * level_downsample``). One region read from ``choice.level``
    (plus the filter's margin), then an antialiased downsample (PIL ``Image.resize`` with the choice's
    filter, :data:`FILTERS`). Outside the slide: black (OpenSlide).
    Raises :class:`SlideError` for a corrupt file.
    """
    if choice.resampled:
        bx0, by0, bx1, by1 = source_box(choice, x0, y0, w, h)
    else:
        bx0, by0, bx1, by1 = x0, y0, x0 + w, y0 + h
    ds = choice.level_downsample
    region = slide.read_region(int(round(bx0 * ds)), int(round(by0 * ds)), choice.level,
                               (max(1, bx1 - bx0), max(1, by1 - by0)))
    return resample_region(choice, region, bx0, by0, x0, y0, w, h)


# ---------------------------------------------------------------------------------------------------
# CLI


def add_scale_arguments(parser: argparse.ArgumentParser, recorded: str = "manifest mpp_source 'assumed'") -> None:
    """Add ``--level``, ``--mpp`` (mutually exclusive), ``--assume-mpp`` and ``--resample-filter`` to
    ``parser``; ``recorded``: where the command records an assumed scale (``extract``: its manifest), said
    in ``--assume-mpp``'s help."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--level", type=int, default=None, help="pyramid level to read as is (default 0)")
    g.add_argument("--mpp", type=float, default=None,
                   help="target microns/pixel: the nearest level within 10 %%, else the next finer level "
                        "downsampled (antialiased; never upsampled)")
    parser.add_argument("--assume-mpp", type=float, default=None, metavar="X",
                        help="the slides' level-0 microns/pixel, for files whose scale tag is missing or wrong "
                             f"({recorded})")
    parser.add_argument("--resample-filter", choices=tuple(FILTERS), default=None, metavar="FILTER",
                        help=f"filter when --mpp resamples a level: {', '.join(FILTERS)} (default {DEFAULT_FILTER}: "
                             "keeps tissue detail; area costs ~20%% less CPU per patch but blurs, 0.15-1.2 dB "
                             "lower PSNR; bicubic is both slower and blurrier than area; bench/extract.py)")


def scale_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``level``, ``mpp``, ``assume_mpp``, ``resample_filter`` from parsed :func:`add_scale_arguments` options."""
    return {"level": args.level, "mpp": args.mpp, "assume_mpp": args.assume_mpp,
            "resample_filter": getattr(args, "resample_filter", None)}
