"""Grid patch extraction: tissue cells of whole-slide images to PNG files and ``manifest.csv``.

Output tree (ImageFolder-compatible)::

    OUT/<tumour|normal|unlabeled>/<slide>_<x>_<y>.png    # x, y: level-0 top-left of the patch
    OUT/manifest.csv                                      # one row per finished PNG (see MANIFEST_COLUMNS)
    OUT/<slide>.qc.png                                    # QC: thumbnail, tissue mask, kept grid by label

Each patch is exactly ``OpenSlide.read_region((x, y), level, (size, size)).convert("RGB")``. To avoid
decoding shared tiles once per patch, neighbouring cells are read as one block region and sliced
(pixel-identical at level 0 and at levels with an integer downsample; other levels are read per
patch). Blocks run on a process pool (one OpenSlide handle per worker, every core by default).

Writes are atomic (temp file + rename) and the PNG encoding is deterministic, so an interrupted run
(Ctrl-C, ``kill -9``) is resumed by running the same command again: finished PNGs are skipped and the
final tree is byte-identical to an uninterrupted run. The manifest lists only finished files, sorted
by slide, y, x; it is rewritten atomically every few seconds and at the end.

This module (and the ``extract`` command) never imports torch.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import re
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from aeutils.errors import AeutilsError, AnnotationError, PatchError, SlideError
from aeutils.io import atomic_path, atomic_write_bytes, atomic_write_text

__all__ = [
    "GridCell",
    "SlidePlan",
    "MANIFEST_COLUMNS",
    "LABEL_DIRS",
    "plan_grid",
    "plan_slide",
    "extract",
    "read_manifest",
    "plot_grid",
    "add_cli_arguments",
    "run_cli",
]

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = (
    "path", "slide", "level", "x", "y", "size", "mpp", "tissue_fraction", "tumour_fraction", "label",
    "downsample", "slide_width", "slide_height",
)
#: Columns every manifest has (the last three were added later; read_manifest gives None without them).
REQUIRED_COLUMNS = MANIFEST_COLUMNS[:10]
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

    ``x, y``: level-0 pixel coordinates of the top-left corner; ``size``: side in pixels at ``level``;
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
    """Everything known about one slide before its pixels are read."""

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


# ---------------------------------------------------------------------------------------------------
# planning


def _resolve_level(slide: Any, level: int | None, mpp: float | None) -> int:
    if mpp is not None:
        if level not in (None, 0):
            raise PatchError("give either a level or a target mpp, not both")
        return slide.level_for_mpp(mpp)
    level = 0 if level is None else level
    slide.check_level(level)
    return level


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PatchError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def plan_slide(
    slide: Any,
    patch_size: int = 181,
    level: int | None = 0,
    stride: int | None = None,
    min_tissue: float = 0.5,
    annotations: Any = None,
    *,
    mpp: float | None = None,
) -> SlidePlan:
    """Plan the grid of an open :class:`~aeutils.slides.Slide` (or a path): tissue mask, cells, labels.

    See :func:`plan_grid` for the parameters. Raises :class:`SlideError` for a bad level, a patch
    larger than the level, or no tissue; :class:`AnnotationError` for unreadable annotations.
    """
    from aeutils.annotations import Annotations, annotation_for_slide
    from aeutils.slides import Slide, open_slide
    from aeutils.tissue import detect_tissue

    size = _check_positive("patch size", patch_size)
    stride = size if stride is None else _check_positive("stride", stride)
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise PatchError(f"min tissue must be in [0, 1], got {min_tissue}")
    own = not isinstance(slide, Slide)
    s = open_slide(slide) if own else slide
    try:
        lvl = _resolve_level(s, level, mpp)
        lw, lh = s.level_dimensions[lvl]
        if size > lw or size > lh:
            raise SlideError(f"{s.path}: patch size {size} px is larger than level {lvl} ({lw} x {lh} px)")
        ds = s.level_downsamples[lvl]
        w0, h0 = s.dimensions
        foot = size * ds  # cell side in level-0 pixels
        # Tissue mask with >= ~8 mask pixels per cell side (1024..4096 px; a level near that size is used as is).
        max_side = int(min(4096, max(1024, math.ceil(max(w0, h0) * 8 / foot))))
        thumb, tissue = detect_tissue(s, max_side)
        if not tissue.mask.any():
            raise SlideError(f"{s.path}: no tissue found (the tissue mask of the thumbnail is empty)")
        lxs = np.arange(0, lw - size + 1, stride, dtype=np.int64)
        lys = np.arange(0, lh - size + 1, stride, dtype=np.int64)
        gx, gy = np.meshgrid(lxs, lys)  # row-major: y then x
        xs = np.rint(gx.ravel() * ds).astype(np.int64)
        ys = np.rint(gy.ravel() * ds).astype(np.int64)
        tf = tissue.fractions(xs, ys, foot, foot)
        keep = tf >= float(min_tissue)
        xs, ys, tf = xs[keep], ys[keep], tf[keep]
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
        from aeutils.annotations import TUMOUR_THRESHOLD

        for i in range(len(xs)):
            tuf = None if tumour is None else round(float(tumour[i]), 6)
            label = None if tuf is None else int(tuf >= TUMOUR_THRESHOLD)
            cells.append(GridCell(int(xs[i]), int(ys[i]), lvl, size, round(float(tf[i]), 6), tuf, label))
        return SlidePlan(
            path=s.path, name=s.name, level=lvl, size=size, stride=stride, downsample=ds,
            mpp=None if s.mpp is None else s.mpp * ds, cells=cells, dimensions=(int(w0), int(h0)),
            thumbnail=thumb, tissue=tissue,
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
    ax.set_title(title if title is not None else f"{name}: {len(cells)} patches ({counts or 'none'})", fontsize=9)
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
    for h in _HANDLES.values():
        h.close()
    _HANDLES.clear()


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


# A task: (slide path, level, size, out dir, reads); each read is (x0, y0, w, h, [(dx, dy, relpath), ...]):
# level-0 top-left x0, y0 of a w x h (level pixels) region and where each cell sits in it.
Task = tuple


def _run_task(task: Task) -> tuple[int, str | None]:
    """Do one task's reads, crop their cells, write the PNGs. Returns (patches written, error or None)."""
    path, level, size, out, reads = task
    try:
        import openslide

        from aeutils.slides import read_rgb

        root = Path(out)
        for folder in {rel.rpartition("/")[0] for rel in _task_paths(task)}:
            (root / folder).mkdir(parents=True, exist_ok=True)
        n = 0
        for x0, y0, w, h, cells in reads:
            try:
                # One read per strip; each crop is then exactly read_region(cell).convert("RGB").
                region = read_rgb(_osr(path), x0, y0, level, w, h)
            except openslide.OpenSlideError as exc:
                return n, f"{path}: cannot read pixels ({' '.join(str(exc).split())}); truncated or corrupt file?"
            for dx, dy, rel in cells:
                # No fsync per patch (thousands of small files): the rename alone makes a kill -9 leave
                # whole PNGs or none, which is what resume relies on; it does not guard a power cut.
                atomic_write_bytes(root / rel, encode_png(region[dy:dy + size, dx:dx + size]), fsync=False)
                n += 1
        return n, None
    except OSError as exc:
        return 0, f"{out}: cannot write patches ({exc.strerror or exc})"


def _pool_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


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


def _blocks(plan: SlidePlan, out: Path, todo: list[GridCell]) -> list[Task]:
    """Group cells into tasks of about BLOCK_SIDE x BLOCK_SIDE level pixels, row-major.

    Within a task, each run of horizontally adjacent cells is one read (a strip ``size`` pixels tall),
    so no pixel outside the kept cells is painted, and tiles shared by neighbouring strips come from
    the worker's OpenSlide tile cache instead of being decoded again. At levels whose downsample is
    not an integer, cells are read one by one (OpenSlide maps level-0 to level coordinates by
    division, so only single reads are guaranteed to equal ``read_region`` of the cell).
    """
    ds, size, stride = plan.downsample, plan.size, plan.stride
    merge = (plan.level == 0 or float(ds).is_integer()) and stride <= size
    per = max(1, BLOCK_SIDE // stride)
    groups: dict[tuple[int, int], list[tuple[int, int, GridCell]]] = {}
    for c in todo:
        lx, ly = round(c.x / ds), round(c.y / ds)
        groups.setdefault(((ly // stride) // per, (lx // stride) // per), []).append((ly, lx, c))
    tasks = []
    for key in sorted(groups):
        reads: list[tuple[int, int, int, int, list[tuple[int, int, str]]]] = []
        run: list[tuple[int, int, GridCell]] = []

        def flush() -> None:
            if run:
                ly0, lx0, c0 = run[0]
                lx1 = run[-1][1] + size
                reads.append((c0.x, c0.y, lx1 - lx0, size,
                              [(lx - lx0, 0, c.relpath(plan.name)) for _, lx, c in run]))
                run.clear()

        for ly, lx, c in sorted(groups[key], key=lambda t: (t[0], t[1])):
            if not (merge and run and run[-1][0] == ly and lx - run[-1][1] == stride):
                flush()
            run.append((ly, lx, c))
        flush()
        tasks.append((str(plan.path), plan.level, size, str(out), reads))
    return tasks


def _task_paths(task: Task) -> list[str]:
    """Relative PNG paths a task writes."""
    return [rel for *_, cells in task[4] for _, _, rel in cells]


# ---------------------------------------------------------------------------------------------------
# manifest


def _fmt(v: float | None, digits: int = 6) -> str:
    return "" if v is None else f"{v:.{digits}g}"


def _row(plan: SlidePlan, c: GridCell) -> dict[str, str]:
    return {
        "path": c.relpath(plan.name), "slide": plan.name, "level": str(c.level), "x": str(c.x), "y": str(c.y),
        "size": str(c.size), "mpp": _fmt(plan.mpp), "tissue_fraction": f"{c.tissue_fraction:.4f}",
        "tumour_fraction": "" if c.tumour_fraction is None else f"{c.tumour_fraction:.4f}",
        "label": "" if c.label is None else str(c.label),
        "downsample": _fmt(plan.downsample, 8), "slide_width": str(plan.dimensions[0]),
        "slide_height": str(plan.dimensions[1]),
    }


def _sort_key(r: dict[str, str]) -> tuple[Any, ...]:
    return (r["slide"], int(r["level"]), int(r["y"]), int(r["x"]), r["path"])


def _read_raw_manifest(out: Path) -> list[dict[str, str]]:
    path = out / MANIFEST_NAME
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise PatchError(f"{path}: unreadable manifest ({exc})") from None
    if rows and set(REQUIRED_COLUMNS) - set(rows[0]):
        raise PatchError(f"{path}: not a patch manifest (missing columns {sorted(set(REQUIRED_COLUMNS) - set(rows[0]))})")
    return rows


def _write_manifest(out: Path, rows: Iterable[dict[str, str]]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in sorted(rows, key=_sort_key):
        w.writerow(r)
    return atomic_write_text(out / MANIFEST_NAME, buf.getvalue())


def read_manifest(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of ``OUT/manifest.csv`` (``out_dir`` = OUT or the CSV itself), typed.

    Each row: ``path`` (str, relative to OUT), ``slide`` (str), ``level, x, y, size`` (int; x, y level-0
    pixels, size pixels at the level), ``mpp`` (float or None), ``tissue_fraction`` (float),
    ``tumour_fraction`` (float or None), ``label`` (0, 1 or None), ``downsample`` (float, of the level),
    ``slide_width, slide_height`` (int, level-0 pixels; these three are None in older manifests).
    Raises :class:`PatchError` if the manifest is missing or malformed.
    """
    p = Path(out_dir)
    out = p.parent if p.suffix == ".csv" else p
    if not (out / MANIFEST_NAME).is_file():
        raise PatchError(f"{out / MANIFEST_NAME}: no such manifest (run `python -m aeutils extract ... --out {out}`)")
    rows = []
    for r in _read_raw_manifest(out):
        try:
            rows.append({
                "path": r["path"], "slide": r["slide"], "level": int(r["level"]), "x": int(r["x"]),
                "y": int(r["y"]), "size": int(r["size"]), "mpp": float(r["mpp"]) if r["mpp"] else None,
                "tissue_fraction": float(r["tissue_fraction"]),
                "tumour_fraction": float(r["tumour_fraction"]) if r["tumour_fraction"] else None,
                "label": int(r["label"]) if r["label"] else None,
                "downsample": float(r["downsample"]) if r.get("downsample") else None,
                "slide_width": int(r["slide_width"]) if r.get("slide_width") else None,
                "slide_height": int(r["slide_height"]) if r.get("slide_height") else None,
            })
        except (TypeError, ValueError) as exc:
            raise PatchError(f"{out / MANIFEST_NAME}: bad row {r} ({exc})") from None
    return rows


# ---------------------------------------------------------------------------------------------------
# extraction

_TMP_RE = re.compile(r"^\..+\.tmp$")


def _clean_tmp(out: Path) -> None:
    """Remove leftovers of interrupted atomic writes (``.<name>.*.tmp``) in OUT and its label folders."""
    for d in [out, *(out / v for v in LABEL_DIRS.values())]:
        if d.is_dir():
            for p in d.iterdir():
                if _TMP_RE.match(p.name) and p.is_file():
                    p.unlink(missing_ok=True)


def _existing_pngs(out: Path) -> set[str]:
    """Relative paths of the PNGs already in OUT's label folders (one directory listing each)."""
    found = set()
    for d in LABEL_DIRS.values():
        folder = out / d
        if folder.is_dir():
            found.update(f"{d}/{e.name}" for e in os.scandir(folder) if e.name.endswith(".png"))
    return found


def _remove_stale(out: Path, plan: SlidePlan) -> None:
    """Delete this slide's PNGs that are not in the plan (another grid or label from an earlier run)."""
    wanted = {c.relpath(plan.name) for c in plan.cells}
    pat = re.compile(rf"^{re.escape(plan.name)}_\d+_\d+\.png$")
    for d in LABEL_DIRS.values():
        folder = out / d
        if folder.is_dir():
            for p in folder.iterdir():
                if pat.match(p.name) and f"{d}/{p.name}" not in wanted:
                    p.unlink(missing_ok=True)


def default_workers() -> int:
    """Cores available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))  # type: ignore[attr-defined]
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def extract(
    slides: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    patch_size: int = 181,
    level: int | None = 0,
    mpp: float | None = None,
    stride: int | None = None,
    min_tissue: float = 0.5,
    annotations: Any = None,
    keep: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    on_error: Callable[[AeutilsError], None] | None = None,
) -> Path:
    """Cut the tissue cells of ``slides`` into ``out`` (PNG tree + manifest.csv + QC figures).

    Grid parameters as in :func:`plan_grid`; ``mpp`` (microns/pixel) picks the nearest pyramid level
    instead of ``level``; ``keep`` = ``"tumour"`` or ``"normal"`` keeps only those patches (needs
    ``annotations``); ``workers`` processes (default: every core). A slide that fails (missing,
    not a slide, corrupt, no tissue, bad annotations, ...) does not stop the others: its error goes to
    ``on_error`` if given, otherwise the first one is raised after the other slides are done.
    Returns the manifest path.

    The pool forks on Linux; elsewhere it spawns, which re-imports the calling script: call ``extract``
    from under ``if __name__ == "__main__":`` there (notebooks need nothing).
    """
    paths = [slides] if isinstance(slides, (str, os.PathLike)) else list(slides)
    if not paths:
        raise PatchError("no slides given")
    if keep not in (None, "tumour", "normal", "tumor"):
        raise PatchError(f"keep must be 'tumour' or 'normal', got {keep!r}")
    if keep is not None and annotations is None:
        raise PatchError("keeping only tumour or normal patches needs annotations (--annotations)")
    if isinstance(annotations, (str, os.PathLike)) and not Path(annotations).exists():
        raise AnnotationError(f"{annotations}: no such annotation file or folder")
    if mpp is not None and level not in (None, 0):
        raise PatchError("give either --level or --mpp, not both")
    nworkers = default_workers() if workers is None else _check_positive("workers", workers)
    keep_label = None if keep is None else (0 if keep == "normal" else 1)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PatchError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    errors: list[AeutilsError] = []

    def fail(err: AeutilsError) -> None:
        errors.append(err)
        if on_error is not None:
            on_error(err)

    _clean_tmp(out)
    old_rows = _read_raw_manifest(out)

    from tqdm.auto import tqdm

    pool = None
    if nworkers > 1:
        import multiprocessing as mp

        # fork on Linux: fast to start and needs no `if __name__ == "__main__"` guard in the caller's
        # script (forked now, before any slide is open here); spawn elsewhere.
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        pool = mp.get_context(method).Pool(nworkers, initializer=_pool_init)

    plans: list[SlidePlan] = []
    done: dict[str, set[str]] = {}
    failed: set[str] = set()
    queued: list[tuple[SlidePlan, Task, Any]] = []  # (plan, task, AsyncResult or None: run inline)

    def rows_now() -> list[dict[str, str]]:
        """Manifest rows: this call's slides (finished files only) + other slides' old rows."""
        live = {pl.name for pl in plans if pl.name not in failed}
        rows = [r for r in old_rows if r["slide"] not in live]
        for pl in plans:
            if pl.name in live:
                fin = done[pl.name]
                rows.extend(_row(pl, c) for c in pl.cells if c.relpath(pl.name) in fin)
        return rows

    manifest = out / MANIFEST_NAME
    # The overall bar grows as slides are planned; per-slide bars follow the blocks as they finish.
    overall = tqdm(total=0, desc="all slides", unit="patch", disable=not progress, position=0, dynamic_ncols=True)
    try:
        # Plan each slide, queue its blocks on the pool, then draw its QC figure while the pool works.
        seen: dict[str, Path] = {}
        present = _existing_pngs(out)  # finished patches of earlier runs (checked again per slide below)
        for p in paths:
            try:
                name = Path(p).stem
                if name in seen:
                    raise SlideError(f"{p}: same name as {seen[name]} (patch files are named by slide stem)")
                plan = plan_slide(p, patch_size, level, stride, min_tissue, annotations, mpp=mpp)
            except AeutilsError as err:
                fail(err)
                continue
            seen[name] = Path(p)
            if keep_label is not None:
                plan.cells = [c for c in plan.cells if c.label == keep_label]
            finished, pending = set(), []
            for c in plan.cells:
                rel = c.relpath(plan.name)
                if rel in present and _png_size(out / rel) == (c.size, c.size):
                    finished.add(rel)
                else:
                    pending.append(c)
            for lab in {c.label for c in plan.cells}:
                (out / LABEL_DIRS[lab]).mkdir(exist_ok=True)
            plans.append(plan)
            done[plan.name] = finished
            overall.total += len(plan.cells)
            overall.update(len(finished))
            for task in _blocks(plan, out, pending):
                queued.append((plan, task, None if pool is None else pool.apply_async(_run_task, (task,))))
            _save_qc(plan, out / f"{plan.name}.qc.png")
            plan.thumbnail = plan.thumbnail[:0]  # free memory; the QC figure is done

        overall.refresh()
        last_write = time.monotonic()
        current: str | None = None
        bar = None
        for pl, task, res in queued:
            if pl.name != current:
                if bar is not None:
                    bar.close()
                current = pl.name
                bar = tqdm(total=len(pl.cells), initial=len(done[pl.name]), desc=pl.name, unit="patch",
                           disable=not progress, position=1, leave=False, dynamic_ncols=True)
            if pl.name in failed:
                if res is not None:
                    res.wait()
                continue
            n, err = res.get() if res is not None else _run_task(task)
            if err is not None:
                failed.add(pl.name)
                fail(SlideError(err) if not err.startswith(str(out)) else PatchError(err))
                continue
            done[pl.name].update(_task_paths(task))
            overall.update(n)
            bar.update(n)  # type: ignore[union-attr]
            if time.monotonic() - last_write > MANIFEST_EVERY_S:
                _write_manifest(out, rows_now())
                last_write = time.monotonic()
        if bar is not None:
            bar.close()
        for pl in plans:
            if pl.name not in failed:
                _remove_stale(out, pl)
    finally:
        overall.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        _close_handles()
        manifest = _write_manifest(out, rows_now())
    if errors and on_error is None:
        raise errors[0]
    return manifest


# ---------------------------------------------------------------------------------------------------
# CLI


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m aeutils extract``."""
    parser.add_argument("slides", nargs="+", metavar="SLIDE", help="whole-slide images (any OpenSlide format)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (PNG tree + manifest.csv)")
    parser.add_argument("--patch-size", type=int, default=181, help="patch side in pixels at the level (default 181)")
    res = parser.add_mutually_exclusive_group()
    res.add_argument("--level", type=int, default=None, help="pyramid level to read (default 0)")
    res.add_argument("--mpp", type=float, default=None, help="target microns/pixel: the nearest pyramid level")
    parser.add_argument("--stride", type=int, default=None, help="grid step in level pixels (default: patch size)")
    parser.add_argument("--min-tissue", type=float, default=0.5, help="keep cells with tissue fraction >= this (0.5)")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="ASAP/CAMELYON16 XML file, or a folder of <slide stem>.xml")
    parser.add_argument("--keep", choices=("tumour", "normal"), default=None,
                        help="keep only tumour or only normal patches (needs --annotations)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``extract``; each failing slide prints one ``error: <file>: <problem>`` line. Exit 2 if any failed."""
    errors: list[AeutilsError] = []

    def report(err: AeutilsError) -> None:
        errors.append(err)
        print(f"error: {err}", file=sys.stderr, flush=True)

    manifest = extract(
        args.slides, args.out, patch_size=args.patch_size, level=args.level, mpp=args.mpp, stride=args.stride,
        min_tissue=args.min_tissue, annotations=args.annotations, keep=args.keep, workers=args.workers,
        progress=not args.quiet, on_error=report,
    )
    rows = read_manifest(manifest.parent)
    ok = len(args.slides) - len(errors)
    print(f"{len(rows)} patches in {manifest} ({ok} of {len(args.slides)} slides done)")
    return 2 if errors else 0
