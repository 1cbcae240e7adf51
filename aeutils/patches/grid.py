"""Grid planning (pure: no pixels read but a thumbnail): which cells of a slide become patches.

A slide's grid is ``size`` patch pixels every ``stride`` patch pixels from the top-left, cells wholly
inside the slide at the chosen scale; a cell is kept when its tissue fraction (automatic tissue mask of
a thumbnail, or the caller's own mask: :mod:`aeutils.tissue`) is at least ``min_tissue``. Annotations
label cells; ``keep`` and ``max_patches`` (a seeded uniform sample) select among them. Also the shard a
slide belongs to (``--shard K/N``). Never imports torch.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from aeutils.errors import PatchError, SlideError
from aeutils.scale import DEFAULT_TOLERANCE, ScaleChoice, resolve_scale

__all__ = [
    "LABEL_DIRS", "GridCell", "SlidePlan", "plan_slide", "plan_grid", "sample_cells", "shard_of", "parse_shard",
    "check_grid_options", "check_positive", "keep_label", "norm_level",
]

#: label -> output folder
LABEL_DIRS = {None: "unlabeled", 0: "normal", 1: "tumour"}


@dataclass(frozen=True)
class GridCell:
    """One square grid cell (a patch) of a slide.

    ``x, y``: level-0 pixel coordinates of the top-left corner; ``level``: the pyramid level read;
    ``size``: side in patch pixels (pixels of the level, or resampled ones: see the plan's ``factor``);
    ``tissue_fraction``: 0..1 of the cell covered by the tissue mask; ``tumour_fraction`` (0..1) and
    ``label`` (1 tumour, 0 normal) are ``None`` without annotations.
    """

    x: int
    y: int
    level: int
    size: int
    tissue_fraction: float
    tumour_fraction: float | None = None
    label: int | None = None

    @property
    def label_dir(self) -> str:
        """Output folder: ``tumour``, ``normal`` or ``unlabeled``."""
        return LABEL_DIRS[self.label]

    def relpath(self, slide_name: str) -> str:
        """Path of the PNG relative to the output folder (POSIX separators)."""
        return f"{self.label_dir}/{slide_name}_{self.x}_{self.y}.png"


@dataclass
class SlidePlan:
    """Everything known about one slide before its pixels are read.

    ``downsample``: level-0 pixels per patch pixel (the level's downsample x ``factor``); ``mpp``: of
    the patch pixels (None if unknown); ``stride``: grid step in patch pixels; ``grid_cells``: tissue
    cells before ``keep`` / ``max_patches`` selection; ``tissue``: the mask the cells were kept by
    (``tissue.source``: ``"auto"`` for the automatic detection, else where the caller's mask came from).
    """

    path: Path
    name: str
    level: int
    size: int
    stride: int
    downsample: float
    mpp: float | None
    cells: list[GridCell]
    dimensions: tuple[int, int]  # level-0 (width, height) of the slide
    thumbnail: np.ndarray = field(repr=False)
    tissue: Any = field(repr=False)  # aeutils.tissue.TissueMask
    scale: ScaleChoice | None = None
    grid_cells: int = 0

    @property
    def factor(self) -> float:
        """Resample factor (1: the level's pixels as they are)."""
        return 1.0 if self.scale is None else self.scale.factor

    @property
    def mpp_source(self) -> str | None:
        """``"slide"``, ``"assumed"`` or ``None``."""
        return None if self.scale is None else self.scale.mpp_source

    @property
    def tissue_source(self) -> str:
        """``"auto"`` (tissue detected on a thumbnail) or the source of the caller's mask (a file, ``"array"``)."""
        return getattr(self.tissue, "source", "auto")


# ---------------------------------------------------------------------------------------------------
# option checks (shared with extract, which checks them once before any slide)


def check_positive(name: str, value: Any) -> int:
    """``value`` as an int if it is a positive integer; raises :class:`PatchError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PatchError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def norm_level(level: int | None, mpp: float | None) -> int | None:
    """``level=0`` (the default) with ``mpp`` means "no level given"; anything else with mpp is an error."""
    if mpp is not None:
        if level not in (None, 0):
            raise PatchError("give either --level or --mpp, not both")
        return None
    return level


def check_grid_options(patch_size: Any, stride: Any, min_tissue: Any, max_patches: Any) -> tuple[int, int | None]:
    """``(patch size, stride or None)`` after checking all four; raises :class:`PatchError`."""
    size = check_positive("patch size", patch_size)
    st = None if stride is None else check_positive("stride", stride)
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise PatchError(f"min tissue must be in [0, 1], got {min_tissue}")
    if max_patches is not None:
        check_positive("max patches", max_patches)
    return size, st


def keep_label(keep: str | None, annotations: Any) -> int | None:
    """The label ``keep`` selects (1 tumour, 0 normal, None: all); raises :class:`PatchError`."""
    if keep not in (None, "tumour", "normal", "tumor"):
        raise PatchError(f"keep must be 'tumour' or 'normal', got {keep!r}")
    if keep is not None and annotations is None:
        raise PatchError("keeping only tumour or normal patches needs annotations (--annotations)")
    return None if keep is None else (0 if keep == "normal" else 1)


# ---------------------------------------------------------------------------------------------------
# selection and shards


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def sample_cells(cells: Sequence[GridCell], n: int | None, name: str, seed: int = 0) -> list[GridCell]:
    """A uniform random sample of ``n`` of ``cells`` (all if ``n`` is None or >= len), in grid order.

    Seeded by ``seed`` and the slide ``name`` only, so every rerun and resume picks the same cells; the
    sample for a larger ``n`` contains the one for a smaller ``n`` (a prefix of one permutation).
    """
    if n is None or n >= len(cells):
        return list(cells)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _stable_hash(name) & 0xFFFFFFFF])
    pick = np.sort(rng.permutation(len(cells))[: int(n)])
    return [cells[i] for i in pick]


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"K/N"`` (1 <= K <= N) or ``(K, N)`` -> ``(K, N)``; raises :class:`PatchError` otherwise."""
    if shard is None:
        return None
    if isinstance(shard, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if not m:
            raise PatchError(f"--shard must be K/N (e.g. 3/10), got {shard!r}")
        shard = (int(m.group(1)), int(m.group(2)))
    k, n = shard
    if not (n >= 1 and 1 <= k <= n):
        raise PatchError(f"--shard K/N needs 1 <= K <= N, got {k}/{n}")
    return int(k), int(n)


def shard_of(name: str, n: int) -> int:
    """The shard (1..n) of slide ``name``: a stable hash of the name, the same on every machine and run."""
    return _stable_hash(name) % n + 1


# ---------------------------------------------------------------------------------------------------
# planning


def plan_slide(
    slide: Any,
    patch_size: int = 181,
    level: int | None = 0,
    stride: int | None = None,
    min_tissue: float = 0.5,
    annotations: Any = None,
    *,
    mpp: float | None = None,
    assume_mpp: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    keep: str | None = None,
    max_patches: int | None = None,
    seed: int = 0,
    mask: Any = None,
) -> SlidePlan:
    """Plan the grid of an open :class:`~aeutils.slides.Slide` (or a path): scale, tissue mask, cells, labels.

    Scale: ``level`` or ``mpp`` / ``assume_mpp`` as in :func:`aeutils.scale.resolve_scale`. The grid is
    ``patch_size`` patch pixels every ``stride`` (default ``patch_size``) patch pixels from the top-left,
    cells wholly inside the slide, kept when their tissue fraction is ``>= min_tissue``; ``keep``
    (``"tumour"`` / ``"normal"``) then ``max_patches`` (a seeded uniform sample, :func:`sample_cells`)
    select among them. ``mask``: your own tissue mask instead of the automatic one (an H x W bool array
    or a PNG/TIFF file covering the whole slide at any resolution, nonzero = tissue; a folder of
    ``<slide stem>.png``; or a dict slide name -> array or file: :func:`aeutils.tissue.user_mask`).
    Raises :class:`SlideError` for a bad level or scale, a patch larger than the slide at that scale,
    or no tissue; :class:`AnnotationError` for unreadable annotations; :class:`PatchError` for a mask
    that is missing, unreadable or does not match the slide's shape.
    """
    from aeutils.annotations import TUMOUR_THRESHOLD, Annotations, annotation_for_slide
    from aeutils.slides import Slide, open_slide
    from aeutils.tissue import detect_tissue, mask_for_slide, user_mask

    size, stride_opt = check_grid_options(patch_size, stride, min_tissue, max_patches)
    stride = size if stride_opt is None else stride_opt
    level = norm_level(level, mpp)
    kept_label = keep_label(keep, annotations)
    own = not isinstance(slide, Slide)
    s = open_slide(slide) if own else slide
    try:
        choice = resolve_scale(s, level=level, mpp=mpp, assume_mpp=assume_mpp, tolerance=tolerance)
        lvl = choice.level
        ow, oh = choice.output_dimensions
        if size > ow or size > oh:
            where = f"level {lvl}" if not choice.resampled else f"level {lvl} resampled to {choice.mpp:g} um/px"
            raise SlideError(f"{s.path}: patch size {size} px is larger than {where} ({ow} x {oh} px)")
        ds = choice.downsample
        w0, h0 = s.dimensions
        foot = size * ds  # cell side in level-0 pixels
        if mask is None:
            # Tissue mask with >= ~8 mask pixels per cell side (1024..4096 px; a level near that size is used as is).
            max_side = int(min(4096, max(1024, math.ceil(max(w0, h0) * 8 / foot))))
            thumb, tissue = detect_tissue(s, max_side)
            if not tissue.mask.any():
                raise SlideError(f"{s.path}: no tissue found (the tissue mask of the thumbnail is empty)")
        else:
            tissue = user_mask(mask_for_slide(mask, s.name), (w0, h0), slide=s.path)
            if not tissue.mask.any():
                raise SlideError(f"{s.path}: no tissue found (the mask {tissue.source} is empty)")
            thumb = s.thumbnail(1024)  # for the QC figure only
        lxs = np.arange(0, ow - size + 1, stride, dtype=np.int64)
        lys = np.arange(0, oh - size + 1, stride, dtype=np.int64)
        gx, gy = np.meshgrid(lxs, lys)  # row-major: y then x
        xs = np.rint(gx.ravel() * ds).astype(np.int64)
        ys = np.rint(gy.ravel() * ds).astype(np.int64)
        tf = tissue.fractions(xs, ys, foot, foot)
        sel = tf >= float(min_tissue)
        xs, ys, tf = xs[sel], ys[sel], tf[sel]
        if len(xs) == 0:
            what = "tissue fraction" if mask is None else f"mask fraction ({tissue.source})"
            raise SlideError(
                f"{s.path}: no tissue found (no {size} px cell at level {lvl} has {what} >= {min_tissue:g})"
            )
        tumour: np.ndarray | None = None
        if annotations is not None:
            ann = annotations if isinstance(annotations, Annotations) else annotation_for_slide(annotations, s.name)
            tmask = ann.mask((w0, h0), max_side=8192, min_scale=32.0 / foot)
            tumour = tmask.fractions(xs, ys, foot, foot)
        cells = []
        for i in range(len(xs)):
            tuf = None if tumour is None else round(float(tumour[i]), 6)
            label = None if tuf is None else int(tuf >= TUMOUR_THRESHOLD)
            cells.append(GridCell(int(xs[i]), int(ys[i]), lvl, size, round(float(tf[i]), 6), tuf, label))
        n_grid = len(cells)
        if kept_label is not None:
            cells = [c for c in cells if c.label == kept_label]
        cells = sample_cells(cells, max_patches, s.name, seed)
        return SlidePlan(
            path=s.path, name=s.name, level=lvl, size=size, stride=stride, downsample=ds,
            mpp=choice.mpp, cells=cells, dimensions=(int(w0), int(h0)),
            thumbnail=thumb, tissue=tissue, scale=choice, grid_cells=n_grid,
        )
    finally:
        if own:
            s.close()


def plan_grid(
    slide: Any,
    patch_size: int = 181,
    level: int = 0,
    stride: int | None = None,
    min_tissue: float = 0.5,
    annotations: Any = None,
    *,
    mask: Any = None,
) -> list[GridCell]:
    """The kept grid cells of ``slide`` (an open Slide or a path), sorted by ``(y, x)``.

    The grid is ``patch_size`` pixels at ``level``, every ``stride`` (default ``patch_size``) level pixels
    from the top-left, cells wholly inside the level. A cell is kept when its tissue fraction (from the
    thumbnail's tissue mask, or ``mask``: see :func:`plan_slide`) is ``>= min_tissue``. ``annotations``
    (an ASAP XML file, a folder of ``<slide>.xml``, or :class:`~aeutils.annotations.Annotations`) gives
    each cell ``tumour_fraction`` and ``label`` (1 if ``tumour_fraction >= 0.5``).
    """
    return plan_slide(slide, patch_size, level, stride, min_tissue, annotations, mask=mask).cells
