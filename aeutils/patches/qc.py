"""The QC figure of a slide's grid: thumbnail, tissue mask outline, kept cells by label.

:func:`plot_grid` draws it on any Axes (histolab's ``locate_tiles`` analogue); :func:`save_qc` writes
the ``OUT/<slide>.qc.png`` that ``extract`` leaves beside the manifest. Never imports torch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from aeutils.io import atomic_path
from aeutils.patches.grid import LABEL_DIRS, GridCell, SlidePlan

__all__ = ["plot_grid", "save_qc", "drawable_text", "LABEL_COLOURS"]

#: label -> outline colour of its cells (tumour red, normal green, unlabeled blue)
LABEL_COLOURS = {None: "#1f5fbf", 0: "#1a9e3a", 1: "#d62020"}


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

    ``slide``: an open Slide, a path, or a :class:`SlidePlan` (whose thumbnail and mask are reused; a plan
    made with your own mask names it in the title). ``mask``: H x W bool at any resolution covering the
    whole slide. Colours: tumour red, normal green, unlabeled blue. The thumbnail and mask are shrunk to
    ``max_side`` pixels for drawing. Returns the matplotlib Axes (like histolab's ``locate_tiles``).
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from aeutils.slides import Slide, open_slide
    from aeutils.tissue import detect_tissue

    source = "auto"
    if isinstance(slide, SlidePlan):
        thumbnail = slide.thumbnail if thumbnail is None else thumbnail
        mask = slide.tissue.mask if mask is None else mask
        name, ds = slide.name, slide.downsample
        w0, h0 = slide.dimensions
        source = slide.tissue_source
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
    if mask is not None and max(mask.shape[:2]) > max_side:
        k = math.ceil(max(mask.shape[:2]) / max_side)
        mask = np.asarray(mask[::k, ::k]) if mask.dtype == bool else np.asarray(mask[::k, ::k]) != 0
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
    by_label: dict[Any, list[Any]] = {}
    for c in cells:
        by_label.setdefault(c.label, []).append((c.x, c.y, c.size))
    for label, xys in by_label.items():
        # One (n, 4, 2) array of outlines (a Rectangle artist per cell costs ~0.1 ms each, most of the figure).
        x, y, side = (np.asarray(v, np.float64) for v in zip(*xys))
        x0, y0, x1, y1 = x * sx - 0.5, y * sy - 0.5, x * sx - 0.5 + side * ds * sx, y * sy - 0.5 + side * ds * sy
        verts = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1),
                          np.stack([x0, y1], 1)], 1)
        ax.add_collection(PolyCollection(verts, facecolors="none", edgecolors=LABEL_COLOURS[label], linewidths=0.6))
    counts = ", ".join(f"{LABEL_DIRS[k]} {len(v)}" for k, v in sorted(by_label.items(), key=lambda kv: str(kv[0])))
    text = title if title is not None else f"{name}: {len(cells)} patches ({counts or 'none'})"
    if title is None and source != "auto":
        text += f"; tissue: your mask {Path(source).name}"
    ax.set_title(drawable_text(text), fontsize=9)
    ax.set_axis_off()
    return ax


def save_qc(plan: SlidePlan, path: Path) -> None:
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
