"""Grid patch extraction: tissue cells of whole-slide images to PNG files and ``manifest.csv``.

Output tree (ImageFolder-compatible)::

    OUT/<tumour|normal|unlabeled>/<slide>_<x>_<y>.png    # x, y: level-0 top-left of the patch
    OUT/manifest.csv                                      # one row per finished PNG (see aeutils.manifest)
    OUT/<slide>.qc.png                                    # QC: thumbnail, tissue mask, kept grid by label
    OUT/manifest.shard-K-of-N.csv                         # instead of manifest.csv with --shard K/N

Scale (:mod:`aeutils.scale`): ``level`` (default 0) is read as is; ``mpp`` picks the level within 10 %
of it, or else downsamples the next finer level (area filter, antialiased; never upsampling a coarser one).
At factor 1 each patch is exactly ``OpenSlide.read_region((x, y), level, (size, size)).convert("RGB")``.
To avoid decoding shared tiles once per patch, neighbouring cells are read as one strip and sliced
(pixel-identical at level 0 and at levels with an integer downsample; other levels are read per
patch); resampled patches are computed from the strip exactly as from a read of their own
(:func:`aeutils.scale.read_scaled`). On tiled TIFF slides (Aperio .svs, generic tiled .tif) strips are
decoded straight from the TIFF tiles (:mod:`aeutils.tiffread`, ~4x cheaper than OpenSlide's painting)
wherever that was verified at open to give OpenSlide's exact pixels; OpenSlide reads everything
else. Strips run on a process pool (one OpenSlide handle per worker,
every core by default); the workers die with the parent (``kill -9`` included).

Writes are atomic (temp file + rename) and the PNG encoding is deterministic, so an interrupted run
(Ctrl-C, ``kill -9``) is resumed by running the same command again: finished PNGs (header, size in the
manifest, or a full decode for unlisted ones) are skipped and the final tree is byte-identical to an
uninterrupted run. Nothing is deleted silently: a rerun whose grid differs from the one a slide was
extracted with is refused (``overwrite=True`` / ``--overwrite`` replaces it); a slide that fails
mid-way has the files of this run removed; other slides' rows are kept only if their files exist.

This module (and the ``extract`` command) never imports torch.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from aeutils.errors import AeutilsError, AnnotationError, PatchError, SlideError
from aeutils.io import atomic_path, atomic_write_bytes
from aeutils.manifest import (
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    REQUIRED_COLUMNS,
    read_manifest,
    read_raw_manifest,
    shard_manifest_name,
    write_manifest,
)
from aeutils.scale import DEFAULT_TOLERANCE, ScaleChoice, add_scale_arguments, check_assume_mpp, resolve_scale

__all__ = [
    "GridCell",
    "SlidePlan",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "REQUIRED_COLUMNS",
    "LABEL_DIRS",
    "plan_grid",
    "plan_slide",
    "sample_cells",
    "shard_of",
    "parse_shard",
    "extract",
    "read_manifest",
    "plot_grid",
    "add_cli_arguments",
    "run_cli",
]

#: label -> output folder
LABEL_DIRS = {None: "unlabeled", 0: "normal", 1: "tumour"}
#: PNG settings when PIL encodes (no imagecodecs): zlib level 1 with the run-length strategy (zlib.Z_RLE),
#: ~2x faster than PIL's default level 6 for files of the same size. See :func:`encode_png`.
PNG_COMPRESS_LEVEL = 1
PNG_STRATEGY = 3
#: Side (pixels at the level) of the square a task covers (its strips share tiles through the cache).
BLOCK_SIDE = 2048
MANIFEST_EVERY_S = 10.0


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
    cells before ``keep`` / ``max_patches`` selection.
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


# ---------------------------------------------------------------------------------------------------
# planning


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PatchError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _norm_level(level: int | None, mpp: float | None) -> int | None:
    """``level=0`` (the default) with ``mpp`` means "no level given"; anything else with mpp is an error."""
    if mpp is not None:
        if level not in (None, 0):
            raise PatchError("give either --level or --mpp, not both")
        return None
    return level


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


def _check_grid_options(patch_size: Any, stride: Any, min_tissue: Any, max_patches: Any) -> tuple[int, int | None]:
    size = _check_positive("patch size", patch_size)
    st = None if stride is None else _check_positive("stride", stride)
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise PatchError(f"min tissue must be in [0, 1], got {min_tissue}")
    if max_patches is not None:
        _check_positive("max patches", max_patches)
    return size, st


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
) -> SlidePlan:
    """Plan the grid of an open :class:`~aeutils.slides.Slide` (or a path): scale, tissue mask, cells, labels.

    Scale: ``level`` or ``mpp`` / ``assume_mpp`` as in :func:`aeutils.scale.resolve_scale`. The grid is
    ``patch_size`` patch pixels every ``stride`` (default ``patch_size``) patch pixels from the top-left,
    cells wholly inside the slide, kept when their tissue fraction is ``>= min_tissue``; ``keep``
    (``"tumour"`` / ``"normal"``) then ``max_patches`` (a seeded uniform sample, :func:`sample_cells`)
    select among them. Raises :class:`SlideError` for a bad level or scale, a patch larger than the
    slide at that scale, or no tissue; :class:`AnnotationError` for unreadable annotations.
    """
    from aeutils.annotations import TUMOUR_THRESHOLD, Annotations, annotation_for_slide
    from aeutils.slides import Slide, open_slide
    from aeutils.tissue import detect_tissue

    size, stride_opt = _check_grid_options(patch_size, stride, min_tissue, max_patches)
    stride = size if stride_opt is None else stride_opt
    level = _norm_level(level, mpp)
    keep_label = _keep_label(keep, annotations)
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
        # Tissue mask with >= ~8 mask pixels per cell side (1024..4096 px; a level near that size is used as is).
        max_side = int(min(4096, max(1024, math.ceil(max(w0, h0) * 8 / foot))))
        thumb, tissue = detect_tissue(s, max_side)
        if not tissue.mask.any():
            raise SlideError(f"{s.path}: no tissue found (the tissue mask of the thumbnail is empty)")
        lxs = np.arange(0, ow - size + 1, stride, dtype=np.int64)
        lys = np.arange(0, oh - size + 1, stride, dtype=np.int64)
        gx, gy = np.meshgrid(lxs, lys)  # row-major: y then x
        xs = np.rint(gx.ravel() * ds).astype(np.int64)
        ys = np.rint(gy.ravel() * ds).astype(np.int64)
        tf = tissue.fractions(xs, ys, foot, foot)
        sel = tf >= float(min_tissue)
        xs, ys, tf = xs[sel], ys[sel], tf[sel]
        if len(xs) == 0:
            raise SlideError(
                f"{s.path}: no tissue found (no {size} px cell at level {lvl} has tissue fraction >= {min_tissue:g})"
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
        if keep_label is not None:
            cells = [c for c in cells if c.label == keep_label]
        cells = sample_cells(cells, max_patches, s.name, seed)
        return SlidePlan(
            path=s.path, name=s.name, level=lvl, size=size, stride=stride, downsample=ds,
            mpp=choice.mpp, cells=cells, dimensions=(int(w0), int(h0)),
            thumbnail=thumb, tissue=tissue, scale=choice, grid_cells=n_grid,
        )
    finally:
        if own:
            s.close()


def _keep_label(keep: str | None, annotations: Any) -> int | None:
    if keep not in (None, "tumour", "normal", "tumor"):
        raise PatchError(f"keep must be 'tumour' or 'normal', got {keep!r}")
    if keep is not None and annotations is None:
        raise PatchError("keeping only tumour or normal patches needs annotations (--annotations)")
    return None if keep is None else (0 if keep == "normal" else 1)


def plan_grid(
    slide: Any,
    patch_size: int = 181,
    level: int = 0,
    stride: int | None = None,
    min_tissue: float = 0.5,
    annotations: Any = None,
) -> list[GridCell]:
    """The kept grid cells of ``slide`` (an open Slide or a path), sorted by ``(y, x)``.

    The grid is ``patch_size`` pixels at ``level``, every ``stride`` (default ``patch_size``) level pixels
    from the top-left, cells wholly inside the level. A cell is kept when its tissue fraction (from the
    thumbnail's tissue mask) is ``>= min_tissue``. ``annotations`` (an ASAP XML file, a folder of
    ``<slide>.xml``, or :class:`~aeutils.annotations.Annotations`) gives each cell ``tumour_fraction``
    and ``label`` (1 if ``tumour_fraction >= 0.5``).
    """
    return plan_slide(slide, patch_size, level, stride, min_tissue, annotations).cells


# ---------------------------------------------------------------------------------------------------
# QC figure


def plot_grid(
    slide: Any,
    cells: Sequence[GridCell],
    ax: Any = None,
    *,
    thumbnail: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    title: str | None = None,
    max_side: int = 1024,
) -> Any:
    """Draw a slide thumbnail, its tissue mask (yellow outline) and ``cells`` (outlined, coloured by label).

    ``slide``: an open Slide, a path, or a :class:`SlidePlan` (whose thumbnail and mask are reused).
    Colours: tumour red, normal green, unlabeled blue. The thumbnail is shrunk to ``max_side`` pixels
    for drawing. Returns the matplotlib Axes (like histolab's ``locate_tiles``).
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    from aeutils.slides import Slide, open_slide
    from aeutils.tissue import detect_tissue

    if isinstance(slide, SlidePlan):
        thumbnail = slide.thumbnail if thumbnail is None else thumbnail
        mask = slide.tissue.mask if mask is None else mask
        name, ds = slide.name, slide.downsample
        w0 = thumbnail.shape[1] / slide.tissue.scale[0]
        h0 = thumbnail.shape[0] / slide.tissue.scale[1]
    else:
        s = slide if isinstance(slide, Slide) else open_slide(slide)
        try:
            if thumbnail is None:
                thumbnail, tm = detect_tissue(s, 1024)
                mask = tm.mask if mask is None else mask
            name = s.name
            w0, h0 = s.dimensions
            ds = s.level_downsamples[cells[0].level] if cells else 1.0
        finally:
            if s is not slide:
                s.close()
    if max(thumbnail.shape[:2]) > max_side:  # plenty for a figure; imshow / contour of big arrays is slow
        from PIL import Image

        k = math.ceil(max(thumbnail.shape[:2]) / max_side)
        thumbnail = np.asarray(Image.fromarray(thumbnail).reduce(k))
        if mask is not None:
            mask = np.asarray(Image.fromarray(mask).reduce(k)) if mask.dtype != bool else mask[::k, ::k]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6 * thumbnail.shape[0] / thumbnail.shape[1] + 0.3))
    sx, sy = thumbnail.shape[1] / w0, thumbnail.shape[0] / h0
    ax.imshow(thumbnail, interpolation="nearest")
    if mask is not None and mask.any() and not mask.all():
        # Tissue outline (mask may have another resolution than the thumbnail).
        mh, mw = mask.shape
        gx = (np.arange(mw) + 0.5) * thumbnail.shape[1] / mw - 0.5
        gy = (np.arange(mh) + 0.5) * thumbnail.shape[0] / mh - 0.5
        ax.contour(gx, gy, mask.astype(np.float32), levels=[0.5], colors="#f5c400", linewidths=0.8)
    colours = {None: "#1f5fbf", 0: "#1a9e3a", 1: "#d62020"}
    by_label: dict[Any, list[Any]] = {}
    for c in cells:
        side = c.size * ds
        by_label.setdefault(c.label, []).append(Rectangle((c.x * sx - 0.5, c.y * sy - 0.5), side * sx, side * sy))
    for label, rects in by_label.items():
        ax.add_collection(PatchCollection(rects, facecolor="none", edgecolor=colours[label], linewidth=0.6))
    counts = ", ".join(f"{LABEL_DIRS[k]} {len(v)}" for k, v in sorted(by_label.items(), key=lambda kv: str(kv[0])))
    text = title if title is not None else f"{name}: {len(cells)} patches ({counts or 'none'})"
    ax.set_title(drawable_text(text), fontsize=9)
    ax.set_axis_off()
    return ax


def _save_qc(plan: SlidePlan, path: Path) -> None:
    """Write the QC figure of ``plan`` to ``path`` (PNG, atomically; matplotlib Agg without pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    th = plan.thumbnail
    fig = Figure(figsize=(6, 6 * th.shape[0] / max(1, th.shape[1]) + 0.3))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.94))
    plot_grid(plan, plan.cells, ax=ax, max_side=640)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})



_GLYPHS: dict[str, Any] = {}


def drawable_text(text: str) -> str:
    """``text`` with the characters matplotlib's current font cannot draw written as ``\\uXXXX``.

    Slide names in other scripts (CJK, ...) would otherwise draw as empty boxes with a
    missing-glyph warning per character; the escapes keep the name identifiable.
    """
    if text.isascii():
        return text
    from matplotlib import font_manager, ft2font, rcParams

    path = font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"]))
    cmap = _GLYPHS.get(path)
    if cmap is None:
        cmap = _GLYPHS[path] = set(ft2font.FT2Font(path).get_charmap())
    return "".join(ch if ord(ch) in cmap or ch.isspace() else ch.encode("unicode_escape").decode("ascii") for ch in text)


# ---------------------------------------------------------------------------------------------------
# workers

_HANDLES: dict[str, Any] = {}


def _osr(path: str) -> Any:
    h = _HANDLES.get(path)
    if h is None:
        import openslide

        h = _HANDLES[path] = openslide.OpenSlide(path)
    return h


def _close_handles() -> None:
    from aeutils.tiffread import close_readers

    close_readers()
    for h in _HANDLES.values():
        h.close()
    _HANDLES.clear()


def _read_level(path: str, level: int, ds: float, bx0: int, by0: int, w: int, h: int) -> np.ndarray:
    """Level pixels ``[bx0, bx0+w) x [by0, by0+h)`` of ``level`` (downsample ``ds``): h x w x 3 uint8,
    exactly ``OpenSlide.read_region((round(bx0*ds), round(by0*ds)), level, (w, h)).convert("RGB")``.

    Decoded from the TIFF tiles when :func:`aeutils.tiffread.tile_reader` verified that gives
    OpenSlide's pixels for this file and level and the region is inside the level at an exact level-0
    position; otherwise (and if a tile fails to decode) painted by OpenSlide, which raises
    ``openslide.OpenSlideError`` for a corrupt file.
    """
    from aeutils import slides
    from aeutils.tiffread import tile_reader

    osr = _osr(path)
    x, y = int(round(bx0 * ds)), int(round(by0 * ds))
    reader = tile_reader(path, level, osr)
    if reader is not None and x == bx0 * ds and y == by0 * ds and reader.covers(bx0, by0, w, h):
        try:
            return reader.read(bx0, by0, w, h)
        except Exception:  # a bad tile: OpenSlide reads it (or names the problem)
            pass
    return slides.read_rgb(osr, x, y, level, w, h)


def encode_png(rgb: Any) -> bytes:
    """Deterministic PNG bytes of an h x w x 3 uint8 array (or an RGB PIL image).

    With imagecodecs (libpng): zlib level 1, run-length strategy, Paeth row filter: on H&E patches
    ~4x faster than PIL's default save (adaptive filters, level 6) for files of about the same size.
    Without imagecodecs: PIL at level 1 with the run-length strategy (~2x faster than its default,
    same size).
    """
    arr = np.ascontiguousarray(rgb) if isinstance(rgb, np.ndarray) else np.asarray(rgb)
    codecs = _imagecodecs()
    if codecs is not None:
        return bytes(codecs.png_encode(arr, level=1, strategy=3, filter=128))
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_STRATEGY)
    return buf.getvalue()


_CODECS: list[Any] = []


def _imagecodecs() -> Any:
    """The imagecodecs module if it is installed and has PNG, else None (checked once)."""
    if not _CODECS:
        try:
            import imagecodecs

            imagecodecs.png_encode(np.zeros((2, 2, 3), np.uint8), level=1, strategy=3, filter=128)
            _CODECS.append(imagecodecs)
        except Exception:  # not installed, or built without libpng: PIL does it
            _CODECS.append(None)
    return _CODECS[0]


# A task: (slide path, level, size, out dir, reads, scale); each read is (bx0, by0, w, h, [(ox, oy, relpath)]):
# a w x h region of level pixels with top-left level pixel (bx0, by0), and the output-pixel top-left
# (ox, oy) of each patch computed from it (aeutils.scale.resample_region).
Task = tuple


def _run_task(task: Task) -> tuple[int, str | None, list[int]]:
    """Do one task's reads, cut/resample their patches, write the PNGs.

    Returns (patches written, error or None, byte size of each PNG written, in task order).
    """
    path, level, size, out, reads, choice = task
    sizes: list[int] = []
    try:
        import openslide

        from aeutils.scale import resample_region

        root = Path(out)
        for folder in {rel.rpartition("/")[0] for rel in _task_paths(task)}:
            (root / folder).mkdir(parents=True, exist_ok=True)
        ds = choice.level_downsample
        for bx0, by0, w, h, cells in reads:
            try:
                # One read per strip; each patch is then what a read of its own would give.
                region = _read_level(path, level, ds, bx0, by0, w, h)
            except openslide.OpenSlideError as exc:
                return len(sizes), f"{path}: cannot read pixels ({' '.join(str(exc).split())}); truncated or corrupt file?", sizes
            for ox, oy, rel in cells:
                data = encode_png(resample_region(choice, region, bx0, by0, ox, oy, size, size))
                # No fsync per patch (thousands of small files): the rename alone makes a kill -9 leave
                # whole PNGs or none, which is what resume relies on; it does not guard a power cut.
                atomic_write_bytes(root / rel, data, fsync=False)
                sizes.append(len(data))
        return len(sizes), None, sizes
    except OSError as exc:
        return len(sizes), f"{out}: cannot write patches ({exc.strerror or exc})", sizes


def _pool_init(parent: int) -> None:
    """Worker start-up: one OpenMP thread, Ctrl-C left to the parent, and death with the parent.

    On Linux ``PR_SET_PDEATHSIG`` kills the worker the moment its parent dies (``kill -9`` too), so no
    worker goes on writing into a folder nobody manages, nor prints a ``BrokenPipeError`` traceback.
    """
    import signal

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG header, or None if the file is missing or not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def png_complete(path: Path, size: int, nbytes: int | None = None) -> bool:
    """Whether ``path`` is a whole ``size`` x ``size`` PNG: header, end chunk, and ``nbytes`` if known;
    without ``nbytes`` (a patch the manifest does not list yet) the image is decoded in full."""
    if _png_size(path) != (size, size):
        return False
    try:
        n = path.stat().st_size
        if nbytes is not None:
            if n != nbytes:
                return False
            with open(path, "rb") as f:
                f.seek(n - len(_IEND))
                return f.read() == _IEND
        from PIL import Image

        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def _src_box(choice: ScaleChoice, ox: int, oy: int, size: int) -> tuple[int, int, int, int]:
    from aeutils.scale import source_box

    return source_box(choice, ox, oy, size, size) if choice.resampled else (ox, oy, ox + size, oy + size)


def _blocks(plan: SlidePlan, out: Path, todo: list[GridCell]) -> list[Task]:
    """Group cells into tasks of about BLOCK_SIDE x BLOCK_SIDE level pixels, row-major.

    Within a task, each run of horizontally adjacent cells is one read (a strip one cell tall, plus
    the resampling filter's margin), so little outside the kept cells is painted, and tiles shared by
    neighbouring strips come from the worker's OpenSlide tile cache instead of being decoded again. At
    levels whose downsample is not an integer, cells are read one by one (OpenSlide maps level-0 to
    level coordinates by division, so only single reads are guaranteed to equal ``read_region``).
    """
    choice = plan.scale
    if choice is None:  # a plan made by hand: the level as is
        from aeutils.scale import ScaleChoice as _SC

        choice = _SC(plan.level, 1.0, plan.mpp, None, plan.downsample, (10**9, 10**9))
    lds, D, size, stride = choice.level_downsample, choice.downsample, plan.size, plan.stride
    merge = (plan.level == 0 or float(lds).is_integer()) and stride <= size
    per = max(1, BLOCK_SIDE // max(1, round(stride * choice.factor)))
    groups: dict[tuple[int, int], list[tuple[int, int, GridCell]]] = {}
    for c in todo:
        ox, oy = round(c.x / D), round(c.y / D)
        groups.setdefault(((oy // stride) // per, (ox // stride) // per), []).append((oy, ox, c))
    tasks = []
    for key in sorted(groups):
        reads: list[tuple[int, int, int, int, list[tuple[int, int, str]]]] = []
        run: list[tuple[int, int, GridCell]] = []

        def flush() -> None:
            if run:
                oy0, ox0, _ = run[0]
                bx0, by0, _, by1 = _src_box(choice, ox0, oy0, size)
                bx1 = _src_box(choice, run[-1][1], oy0, size)[2]
                reads.append((bx0, by0, bx1 - bx0, by1 - by0, [(ox, oy, c.relpath(plan.name)) for oy, ox, c in run]))
                run.clear()

        for oy, ox, c in sorted(groups[key], key=lambda t: (t[0], t[1])):
            if not (merge and run and run[-1][0] == oy and ox - run[-1][1] == stride):
                flush()
            run.append((oy, ox, c))
        flush()
        tasks.append((str(plan.path), plan.level, size, str(out), reads, choice))
    return tasks


def _task_paths(task: Task) -> list[str]:
    """Relative PNG paths a task writes, in the order it writes them."""
    return [rel for *_, cells in task[4] for _, _, rel in cells]


# ---------------------------------------------------------------------------------------------------
# manifest rows


def _fmt(v: float | None, digits: int = 6) -> str:
    return "" if v is None else f"{v:.{digits}g}"


def _row(plan: SlidePlan, c: GridCell, nbytes: int | None = None) -> dict[str, str]:
    return {
        "path": c.relpath(plan.name), "slide": plan.name, "level": str(c.level), "x": str(c.x), "y": str(c.y),
        "size": str(c.size), "mpp": _fmt(plan.mpp), "tissue_fraction": f"{c.tissue_fraction:.4f}",
        "tumour_fraction": "" if c.tumour_fraction is None else f"{c.tumour_fraction:.4f}",
        "label": "" if c.label is None else str(c.label),
        "downsample": _fmt(plan.downsample, 8), "slide_width": str(plan.dimensions[0]),
        "slide_height": str(plan.dimensions[1]), "stride": str(plan.stride), "resample": _fmt(plan.factor, 8),
        "mpp_source": plan.mpp_source or "", "bytes": "" if nbytes is None else str(nbytes),
    }


# What a slide's earlier rows say about the grid, compared with this run's plan (option, column, value).
def _settings_diff(old: list[dict[str, str]], plan: SlidePlan) -> list[str]:
    if not old or not plan.cells:
        return []
    new = _row(plan, plan.cells[0])
    diffs = []
    for opt, col in (("--patch-size", "size"), ("--stride", "stride"), ("--level", "level"),
                     ("resample factor", "resample"), ("mpp", "mpp"), ("mpp source", "mpp_source")):
        was = {r.get(col) or "" for r in old} - {""}
        now = new.get(col, "")
        if col in ("resample",) and not was:
            was = {"1"}
        if was and now and was != {now}:
            diffs.append(f"{opt} {', '.join(sorted(was))} (now {now})")
    if diffs and diffs[0].startswith("--patch-size") and len(diffs) > 1 and diffs[1].startswith("--stride"):
        if all(r.get("stride") in (None, "", r["size"]) for r in old) and plan.stride == plan.size:
            del diffs[1]  # the default stride (= patch size) followed the patch size
    return diffs


# ---------------------------------------------------------------------------------------------------
# extraction

_TMP_RE = re.compile(r"^\.(.+)\.[^.]+\.tmp$")  # .<target name>.<random>.tmp (aeutils.io.atomic_path)
_PNG_RE = re.compile(r"^(.+)_(\d+)_(\d+)\.png$")


def default_workers() -> int:
    """Cores available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))  # type: ignore[attr-defined]
    except AttributeError:
        return max(1, os.cpu_count() or 1)


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


def _scan(out: Path) -> tuple[dict[str, set[str]], dict[str, list[Path]]]:
    """One listing of OUT and its label folders: PNG relpaths by slide name, and temp files by target name."""
    pngs: dict[str, set[str]] = {}
    tmps: dict[str, list[Path]] = {}
    for d in ["", *LABEL_DIRS.values()]:
        folder = out / d if d else out
        if not folder.is_dir():
            continue
        for e in os.scandir(folder):
            m = _TMP_RE.match(e.name)
            if m:
                tmps.setdefault(m.group(1), []).append(Path(e.path))
                continue
            if d:
                m = _PNG_RE.match(e.name)
                if m:
                    pngs.setdefault(m.group(1), set()).add(f"{d}/{e.name}")
    return pngs, tmps


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PatchError(f"{out}: --out is an existing file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PatchError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PatchError(f"{out}: the output folder is not writable ({exc.strerror or exc})") from None


def _fold_shard_manifests(out: Path, covered: set[str]) -> None:
    """Remove ``manifest.shard-K-of-N.csv`` files all of whose slides this (unsharded) run has redone:
    manifest.csv now holds them (rerunning without --shard is one way to combine shards)."""
    from aeutils.manifest import _SHARD_RE

    for p in out.iterdir():
        if _SHARD_RE.match(p.name):
            try:
                slides = {r["slide"] for r in read_raw_manifest(p)}
            except PatchError:
                continue
            if slides <= covered:
                p.unlink(missing_ok=True)


def _print(msg: str) -> None:
    """Default ``log``: warnings to stderr, the rest (per-slide summaries) to stdout."""
    print(msg, file=sys.stderr if msg.startswith("warning:") else sys.stdout, flush=True)


def extract(
    slides: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    patch_size: int = 181,
    level: int | None = 0,
    mpp: float | None = None,
    assume_mpp: float | None = None,
    stride: int | None = None,
    min_tissue: float = 0.5,
    annotations: Any = None,
    keep: str | None = None,
    max_patches: int | None = None,
    seed: int = 0,
    shard: str | tuple[int, int] | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
    on_error: Callable[[AeutilsError], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Cut the tissue cells of ``slides`` into ``out`` (PNG tree + manifest + QC figures).

    Grid and scale parameters as in :func:`plan_slide` (``mpp``/``assume_mpp``: microns per pixel of
    the patches / of the slides' level 0); ``keep`` = ``"tumour"`` or ``"normal"`` (needs
    ``annotations``); ``max_patches``: a seeded (``seed``) uniform sample per slide; ``shard`` =
    ``"K/N"``: only the slides of shard K (by a stable hash of the name), manifest in
    ``manifest.shard-K-of-N.csv`` (merge with :func:`aeutils.manifest.merge_manifests`, or rerun
    without ``shard``: finished patches are kept and the shard files folded into ``manifest.csv``);
    ``overwrite``: replace a slide's earlier patches made with other settings (otherwise refused);
    ``workers`` processes (default: every core).

    Option errors are raised once, before any slide. A slide that fails (missing, not a slide,
    corrupt, no tissue, bad annotations, conflicting earlier run, ...) does not stop the others: its
    error goes to ``on_error`` if given, otherwise the first one is raised after the other slides are
    done. ``log`` receives the one-line notes: a warning when a slide's scale is unknown, one summary
    line per finished slide (default: warnings to stderr, summaries to stdout, above the progress bar). Returns the
    manifest path.

    The pool forks on Linux; elsewhere it spawns, which re-imports the calling script: call ``extract``
    from under ``if __name__ == "__main__":`` there (notebooks need nothing).
    """
    # -- options: checked once, before any slide --------------------------------------------------
    paths = [slides] if isinstance(slides, (str, os.PathLike)) else list(slides)
    if not paths:
        raise PatchError("no slides given")
    size, _ = _check_grid_options(patch_size, stride, min_tissue, max_patches)
    _keep_label(keep, annotations)
    if isinstance(annotations, (str, os.PathLike)) and not Path(annotations).exists():
        raise AnnotationError(f"{annotations}: no such annotation file or folder")
    level = _norm_level(level, mpp)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise PatchError(f"--mpp must be a positive number of microns per pixel, got {mpp:g}")
    check_assume_mpp(assume_mpp)
    shard_kn = parse_shard(shard)
    nworkers = default_workers() if workers is None else _check_positive("workers", workers)
    out = Path(out)
    _check_out(out)

    from tqdm.auto import tqdm

    def say(msg: str) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            (log or _print)(msg)

    errors: list[AeutilsError] = []

    def fail(err: AeutilsError) -> None:
        errors.append(err)
        if on_error is not None:
            with tqdm.external_write_mode(file=sys.stderr):
                on_error(err)

    # -- the slides of this run: duplicates, names, shard ------------------------------------------
    unique: list[Path] = []
    by_name: dict[str, Path] = {}
    bad_names: list[tuple[Path, Path]] = []
    resolved: set[Path] = set()
    for p in map(Path, paths):
        rp = p.resolve() if p.exists() else p.absolute()
        if rp in resolved:
            say(f"warning: {p} is given more than once; extracted once")
            continue
        resolved.add(rp)
        if p.stem in by_name:
            bad_names.append((p, by_name[p.stem]))
            continue
        by_name[p.stem] = p
        unique.append(p)
    if shard_kn is not None:
        k, n = shard_kn
        unique = [p for p in unique if shard_of(p.stem, n) == k]
        bad_names = [(p, q) for p, q in bad_names if shard_of(p.stem, n) == k]
    for p, q in bad_names:
        fail(SlideError(f"{p}: slide name {p.stem!r} is taken by {q} in this run (patch files are named "
                        f"<slide name>_<x>_<y>.png); rename one of them"))
    names = {p.stem for p in unique}

    manifest = out / (MANIFEST_NAME if shard_kn is None else shard_manifest_name(*shard_kn))
    old_rows = read_raw_manifest(manifest)
    on_disk, tmps = _scan(out)
    old_by_slide: dict[str, list[dict[str, str]]] = {}
    for r in old_rows:
        old_by_slide.setdefault(r["slide"], []).append(r)
    # Other slides' rows stay only if their files are still there (one warning per slide otherwise).
    kept_rows: list[dict[str, str]] = []
    for slide, rows in sorted(old_by_slide.items()):
        if slide in names:
            continue
        have = [r for r in rows if r["path"] in on_disk.get(slide, ())]
        if len(have) < len(rows):
            say(f"warning: {manifest}: {len(rows) - len(have)} of {len(rows)} rows of slide {slide} dropped "
                f"(their PNG files are missing)")
        kept_rows.extend(have)
    for tname in (manifest.name,):
        for t in tmps.get(tname, ()):
            t.unlink(missing_ok=True)

    pool = None
    if nworkers > 1 and unique:
        import multiprocessing as mp

        # fork on Linux: fast to start and needs no `if __name__ == "__main__"` guard in the caller's
        # script (forked now, before any slide is open here); spawn elsewhere.
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        pool = mp.get_context(method).Pool(nworkers, initializer=_pool_init, initargs=(os.getpid(),))

    plans: list[SlidePlan] = []
    done: dict[str, dict[str, int | None]] = {}  # slide -> relpath -> PNG bytes (None: unknown)
    pending_of: dict[str, list[str]] = {}
    left: dict[str, int] = {}  # slide -> tasks not finished yet
    kept_n: dict[str, int] = {}
    failed: set[str] = set()
    qc_new: dict[str, Path] = {}
    queued: list[tuple[SlidePlan, Task, Any]] = []  # (plan, task, AsyncResult or None: run inline)

    def rows_now() -> list[dict[str, str]]:
        """Manifest rows: other slides' checked old rows + this run's finished files (failed slides: old rows)."""
        rows = list(kept_rows)
        planned = {pl.name for pl in plans}
        for name in names:
            if name in failed or name not in planned:
                redo = set(pending_of.get(name, ()))  # not complete on disk: never listed
                rows.extend(r for r in old_by_slide.get(name, ())
                            if r["path"] in on_disk.get(name, ()) and r["path"] not in redo)
        for pl in plans:
            if pl.name not in failed:
                fin = done[pl.name]
                rows.extend(_row(pl, c, fin[rel]) for c in pl.cells if (rel := c.relpath(pl.name)) in fin)
        return rows

    def summary(pl: SlidePlan) -> str:
        n, k = len(done[pl.name]), kept_n[pl.name]
        sel = f", {len(pl.cells)} of {pl.grid_cells} tissue cells sampled" if len(pl.cells) < pl.grid_cells else ""
        scale = pl.scale.describe().removeprefix(f"{pl.scale.slide}: ") if pl.scale else ""
        return f"{pl.name}: {n} patches ({n - k} new, {k} kept{sel}); {scale}"

    bar = tqdm(total=0, desc="patches", unit="patches", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    completed = False
    try:
        # Plan each slide, queue its blocks on the pool, then draw its QC figure while the pool works.
        for p in unique:
            try:
                plan = plan_slide(p, size, level, stride, min_tissue, annotations, mpp=mpp, assume_mpp=assume_mpp,
                                  keep=keep, max_patches=max_patches, seed=seed)
            except AeutilsError as err:
                fail(err)
                continue
            name = plan.name
            if plan.scale is not None and plan.scale.mpp is None:
                say(f"warning: {plan.scale.describe()}")
            wanted = {c.relpath(name): c for c in plan.cells}
            earlier = {r["path"] for r in old_by_slide.get(name, ())} | on_disk.get(name, set())
            stale = sorted(earlier - set(wanted))
            diffs = _settings_diff(old_by_slide.get(name, []), plan)
            if (stale or diffs) and not overwrite:
                why = ("with " + "; ".join(diffs)) if diffs else (
                    "with another selection of cells (--min-tissue, --max-patches, --keep or --annotations differ, "
                    "or an interrupted run with other settings)")
                lost = f"{len(earlier)} patches would be replaced" if diffs else (
                    f"{len(stale)} of its patches are not in this grid and would be lost")
                fail(PatchError(f"{out}: slide {name} was extracted here {why}; {lost}: use another --out, "
                                f"or --overwrite to replace them"))
                continue
            if stale or diffs:
                for rel in sorted(earlier):
                    (out / rel).unlink(missing_ok=True)
                say(f"{name}: --overwrite: removed {len(earlier)} patches of an earlier run with other settings")
                old_by_slide.pop(name, None)
                on_disk.pop(name, None)
            for target, files in tmps.items():  # this slide's leftovers of an interrupted run
                m = _PNG_RE.match(target)
                if (m and m.group(1) == name) or target == f"{name}.qc.png":
                    for t in files:
                        t.unlink(missing_ok=True)
            old_bytes = {r["path"]: int(r["bytes"]) if r.get("bytes") else None for r in old_by_slide.get(name, ())}
            present = on_disk.get(name, set())
            finished: dict[str, int | None] = {}
            pending = []
            for rel, c in wanted.items():
                if rel in present and png_complete(out / rel, c.size, old_bytes.get(rel)):
                    finished[rel] = old_bytes.get(rel) or (out / rel).stat().st_size
                else:
                    pending.append(c)
            plans.append(plan)
            done[name] = finished
            kept_n[name] = len(finished)
            pending_of[name] = [c.relpath(name) for c in pending]
            bar.total += len(plan.cells)
            bar.update(len(finished))
            tasks = _blocks(plan, out, pending)
            left[name] = len(tasks)
            for task in tasks:
                queued.append((plan, task, None if pool is None else pool.apply_async(_run_task, (task,))))
            qc = out / f"{name}.qc.png"
            if not qc.exists():
                qc_new[name] = qc
            _save_qc(plan, qc)
            plan.thumbnail = plan.thumbnail[:0]  # free memory; the QC figure is done
            if not tasks:
                say(summary(plan))
        bar.refresh()
        last_write, every = time.monotonic(), MANIFEST_EVERY_S
        for pl, task, res in queued:
            if pl.name in failed:
                if res is not None:
                    res.wait()
                continue
            bar.set_postfix_str(pl.name, refresh=False)
            n, err, sizes = res.get() if res is not None else _run_task(task)
            fin = done[pl.name]
            for rel, nb in zip(_task_paths(task), sizes):
                fin[rel] = nb
            bar.update(n)
            if err is not None:
                failed.add(pl.name)
                fail(SlideError(err) if not err.startswith(str(out)) else PatchError(err))
                continue
            left[pl.name] -= 1
            if left[pl.name] == 0:
                say(summary(pl))
            if time.monotonic() - last_write > every:
                t0 = time.monotonic()
                write_manifest(manifest, rows_now())
                last_write = time.monotonic()
                # Big runs (hundreds of slides): keep the periodic rewrite under ~5 % of the time.
                every = max(MANIFEST_EVERY_S, 20 * (last_write - t0))
        completed = True
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        _close_handles()
        if completed:
            # A slide that failed mid-way: remove what this run wrote for it (its earlier rows stay).
            for name in failed:
                if name not in pending_of:
                    continue
                for rel in pending_of[name]:
                    (out / rel).unlink(missing_ok=True)
                if name in qc_new and not old_by_slide.get(name):
                    qc_new[name].unlink(missing_ok=True)
        manifest = write_manifest(manifest, rows_now())
        if completed and shard_kn is None:
            _fold_shard_manifests(out, {pl.name for pl in plans} - failed)
    if errors and on_error is None:
        raise errors[0]
    return manifest


# ---------------------------------------------------------------------------------------------------
# CLI


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m aeutils extract``."""
    parser.add_argument("slides", nargs="+", metavar="SLIDE", help="whole-slide images (any OpenSlide format)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (PNG tree + manifest.csv)")
    parser.add_argument("--patch-size", type=int, default=181, help="patch side in pixels (default 181)")
    add_scale_arguments(parser)
    parser.add_argument("--stride", type=int, default=None, help="grid step in patch pixels (default: patch size)")
    parser.add_argument("--min-tissue", type=float, default=0.5, help="keep cells with tissue fraction >= this (0.5)")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="ASAP/CAMELYON16 XML file, or a folder of <slide stem>.xml")
    parser.add_argument("--keep", choices=("tumour", "normal"), default=None,
                        help="keep only tumour or only normal patches (needs --annotations)")
    parser.add_argument("--max-patches", type=int, default=None, metavar="N",
                        help="at most N patches per slide: a seeded uniform sample of its tissue cells, "
                             "the same on every rerun")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-patches sample (0)")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="only the slides of shard K of N (split by name; e.g. --shard $SLURM_ARRAY_TASK_ID/N "
                             "with --array=1-N); writes manifest.shard-K-of-N.csv: combine with "
                             "'python -m aeutils manifest merge OUT', or rerun without --shard")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a slide's patches made here earlier with other settings (default: refuse)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``extract``; each failing slide prints one ``error: <file>: <problem>`` line. Exit 2 if any failed."""
    errors: list[AeutilsError] = []

    def report(err: AeutilsError) -> None:
        errors.append(err)
        print(f"error: {err}", file=sys.stderr, flush=True)

    manifest = extract(
        args.slides, args.out, patch_size=args.patch_size, level=args.level, mpp=args.mpp,
        assume_mpp=args.assume_mpp, stride=args.stride, min_tissue=args.min_tissue, annotations=args.annotations,
        keep=args.keep, max_patches=args.max_patches, seed=args.seed, shard=args.shard, overwrite=args.overwrite,
        workers=args.workers, progress=not args.quiet, on_error=report,
    )
    rows = read_manifest(manifest)
    total = len(args.slides)
    if args.shard:
        k, n = parse_shard(args.shard)  # type: ignore[misc]
        total = len({Path(p).stem for p in args.slides if shard_of(Path(p).stem, n) == k})
        where = f" of shard {k}/{n}"
    else:
        where = ""
    ok = total - len(errors)
    print(f"{len(rows)} patches in {manifest} ({max(ok, 0)} of {total} slides{where} done)")
    return 2 if errors else 0
