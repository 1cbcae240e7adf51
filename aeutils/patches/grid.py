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
    def resample_filter(self) -> str | None:
        """The filter the patches are resampled with (:data:`aeutils.scale.FILTERS`); None when not resampled."""
        return self.scale.filter if self.scale is not None and self.scale.resampled else None

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
    resample_filter: str | None = None,
    keep: str | None = None,
    max_patches: int | None = None,
    seed: int = 0,
    mask: Any = None,
) -> SlidePlan:
    """Plan the grid of an open :class:`~aeutils.slides.Slide` (or a path): scale, tissue mask, cells, labels.

    Scale: ``level`` or ``mpp`` / ``assume_mpp`` / ``resample_filter`` as in
    :func:`aeutils.scale.resolve_scale` (its ``filter``). The grid is
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
    from aeutils.slides import Slide, open_slide

    size, stride_opt = check_grid_options(patch_size, stride, min_tissue, max_patches)
    stride = size if stride_opt is None else stride_opt
    level = norm_level(level, mpp)
    kept_label = keep_label(keep, annotations)
    own = not isinstance(slide, Slide)
    s = open_slide(slide) if own else slide
    try:
        choice = resolve_scale(s, level=level, mpp=mpp, assume_mpp=assume_mpp, tolerance=tolerance,
                               filter=resample_filter)
        _check_fits(s, choice, size)
        foot = size * choice.downsample  # cell side in level-0 pixels
        thumb, tissue = _tissue_mask(s, mask, foot)
        xs, ys = _grid_origins(choice, size, stride)
        cell = f"{size} px cell at level {choice.level}"
        xs, ys, tf = _tissue_cells(s, tissue, xs, ys, foot, float(min_tissue), cell, own_mask=mask is not None)
        tumour = _tumour_fractions(s, annotations, xs, ys, foot)
        cells = _cells(xs, ys, tf, tumour, choice.level, size)
        selected = _select(cells, kept_label, max_patches, s.name, seed)
        return SlidePlan(
            path=s.path, name=s.name, level=choice.level, size=size, stride=stride, downsample=choice.downsample,
            mpp=choice.mpp, cells=selected, dimensions=(int(s.dimensions[0]), int(s.dimensions[1])),
            thumbnail=thumb, tissue=tissue, scale=choice, grid_cells=len(cells),
        )
    finally:
        if own:
            s.close()


def _check_fits(s: Any, choice: ScaleChoice, size: int) -> None:
    """Raise :class:`SlideError` if a ``size`` px patch is larger than the slide at ``choice``'s scale."""
    ow, oh = choice.output_dimensions
    if size > ow or size > oh:
        lvl = choice.level
        where = f"level {lvl}" if not choice.resampled else f"level {lvl} resampled to {choice.mpp:g} um/px"
        raise SlideError(f"{s.path}: patch size {size} px is larger than {where} ({ow} x {oh} px)")


def _tissue_mask(s: Any, mask: Any, foot: float) -> tuple[np.ndarray, Any]:
    """``(thumbnail, TissueMask)`` of slide ``s``: detected on a thumbnail with >= ~8 mask pixels per cell
    side of ``foot`` level-0 px, or the caller's ``mask`` (then the thumbnail is for the QC figure only).
    Raises :class:`SlideError` if the mask is empty."""
    from aeutils.tissue import detect_tissue, mask_for_slide, user_mask

    w0, h0 = s.dimensions
    if mask is None:
        # 1024..4096 px; a level near that size is used as is.
        max_side = int(min(4096, max(1024, math.ceil(max(w0, h0) * 8 / foot))))
        thumb, tissue = detect_tissue(s, max_side)
        if not tissue.mask.any():
            raise SlideError(f"{s.path}: no tissue found (the tissue mask of the thumbnail is empty)")
        return thumb, tissue
    tissue = user_mask(mask_for_slide(mask, s.name), (w0, h0), slide=s.path)
    if not tissue.mask.any():
        raise SlideError(f"{s.path}: no tissue found (the mask {tissue.source} is empty)")
    return s.thumbnail(1024), tissue


def _grid_origins(choice: ScaleChoice, size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 ``(xs, ys)`` (int64) of every cell wholly inside the slide at ``choice``'s scale, row-major."""
    ow, oh = choice.output_dimensions
    ds = choice.downsample
    lxs = np.arange(0, ow - size + 1, stride, dtype=np.int64)
    lys = np.arange(0, oh - size + 1, stride, dtype=np.int64)
    gx, gy = np.meshgrid(lxs, lys)  # row-major: y then x
    return np.rint(gx.ravel() * ds).astype(np.int64), np.rint(gy.ravel() * ds).astype(np.int64)


def _tissue_cells(
    s: Any, tissue: Any, xs: np.ndarray, ys: np.ndarray, foot: float, min_tissue: float, what: str, *, own_mask: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cells (level-0 origins, side ``foot``) whose tissue fraction is ``>= min_tissue``, and their
    fractions; raises :class:`SlideError` naming ``what`` a cell is if none is."""
    tf = tissue.fractions(xs, ys, foot, foot)
    sel = tf >= min_tissue
    if not sel.any():
        frac = f"mask fraction ({tissue.source})" if own_mask else "tissue fraction"
        raise SlideError(f"{s.path}: no tissue found (no {what} has {frac} >= {min_tissue:g})")
    return xs[sel], ys[sel], tf[sel]


def _tumour_fractions(s: Any, annotations: Any, xs: np.ndarray, ys: np.ndarray, foot: float) -> np.ndarray | None:
    """Tumour fraction of each cell from ``annotations`` (a path or :class:`Annotations`), or None without."""
    if annotations is None:
        return None
    from aeutils.annotations import Annotations, annotation_for_slide

    ann = annotations if isinstance(annotations, Annotations) else annotation_for_slide(annotations, s.name)
    w0, h0 = s.dimensions
    tmask = ann.mask((w0, h0), max_side=8192, min_scale=32.0 / foot)
    return tmask.fractions(xs, ys, foot, foot)


def _cells(
    xs: np.ndarray, ys: np.ndarray, tf: np.ndarray, tumour: np.ndarray | None, level: int, size: int
) -> list[GridCell]:
    """:class:`GridCell` per origin, labelled tumour (1) / normal (0) by ``TUMOUR_THRESHOLD`` when annotated."""
    from aeutils.annotations import TUMOUR_THRESHOLD

    cells = []
    for i in range(len(xs)):
        tuf = None if tumour is None else round(float(tumour[i]), 6)
        label = None if tuf is None else int(tuf >= TUMOUR_THRESHOLD)
        cells.append(GridCell(int(xs[i]), int(ys[i]), level, size, round(float(tf[i]), 6), tuf, label))
    return cells


def _select(
    cells: list[GridCell], kept_label: int | None, max_patches: int | None, name: str, seed: int
) -> list[GridCell]:
    """The cells of label ``kept_label`` (None: all), then a seeded sample of ``max_patches`` (:func:`sample_cells`)."""
    if kept_label is not None:
        cells = [c for c in cells if c.label == kept_label]
    return sample_cells(cells, max_patches, name, seed)


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
