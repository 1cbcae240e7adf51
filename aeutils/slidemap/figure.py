"""The figure: a slide's thumbnail beside its encoding map, both read back as a slide viewer opens them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aeutils.slidemap.pyramid import read_settings


def _scale_note(info: dict[str, Any], smpp: float | None) -> str:
    """The input scale the map was made at (an assumed one when the slide's tag is wrong), for a title."""
    used = info.get("mpp")
    if used and info.get("mpp_source") == "assumed":
        return (f", read at {used:.4g} \u00b5m/px (assumed; the file claims {smpp:.4g})" if smpp
                else f", {used:.4g} \u00b5m/px (assumed)")
    if used:
        return f", read at {used:.4g} \u00b5m/px"
    return f", {smpp:.4g} \u00b5m/px" if smpp else ""


def map_figure(slide: str | os.PathLike[str], encoding: str | os.PathLike[str], *, max_side: int = 700) -> Any:
    """A figure (``matplotlib.figure.Figure``, not pyplot) of a slide's thumbnail beside its encoding
    map (thumbnails of at most ``max_side`` px), both read back with :mod:`aeutils.slides` (so it
    shows what a slide viewer opens)."""
    from matplotlib.figure import Figure

    from aeutils.slides import open_slide

    with open_slide(slide) as s:
        thumb, dims, smpp = s.thumbnail(max_side), s.dimensions, s.mpp
        name = s.path.name
    with open_slide(encoding) as e:
        emap, edims, empp = e.thumbnail(max_side), e.dimensions, e.mpp
        info = read_settings(encoding) or {}
    fig = Figure(figsize=(12, 6.6), dpi=100)
    axes = fig.subplots(1, 2, gridspec_kw={"left": 0.01, "right": 0.99, "bottom": 0.01, "top": 0.86, "wspace": 0.04})
    axes[0].imshow(thumb)
    axes[0].set_title(f"{name}\n{dims[0]} x {dims[1]} px{_scale_note(info, smpp)}", fontsize=10)
    axes[1].imshow(emap[..., 0], cmap="gray", vmin=0, vmax=255)
    view = info.get("view", "?")
    label = f"{view} {info.get('low', 2):g}-{info.get('high', 98):g} %" if view == "stretch" else view
    axes[1].set_title(f"{Path(encoding).name} ({label}, whole-slide tissue statistics)\n{edims[0]} x {edims[1]} px"
                      + (f", {empp:.4g} \u00b5m/px" if empp else ""), fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle("A slide and its encoding map (python -m aeutils encode)", fontsize=12, y=0.985)
    return fig


def write_map_figure(slide: str | os.PathLike[str], encoding: str | os.PathLike[str], png: str | os.PathLike[str]) -> Path:
    """:func:`map_figure` saved as a PNG (atomic, no software metadata)."""
    from aeutils.io import atomic_write_bytes
    from aeutils.viz import figure_png

    return atomic_write_bytes(png, figure_png(map_figure(slide, encoding)))
