"""A slide-level explorer (ipywidgets): pick a location on a slide and see that patch, its encoding
and its reconstruction, as :class:`aeutils.viz.Explorer` shows a patch.

The slide's thumbnail (and, if given, its encoding map from ``python -m aeutils encode``, read back
with :mod:`aeutils.slides`) show a box at the current patch. The location is chosen with the ``x`` /
``y`` sliders (patch centre, input pixels at the chosen scale), or by a click on either thumbnail
(:meth:`SlideExplorer.click`; live mouse clicks come through ``ipyevents``, in the notebooks extra; without it
the sliders do the same). Each move reads one ``size`` px patch (:func:`aeutils.scale.read_scaled`),
runs the model on it (:func:`aeutils.encoding.encode_batch`) and redraws one reused
:class:`aeutils.viz.PatchPanel`: input | encoding view | reconstruction | error.
"""
from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from aeutils.errors import PatchError

if TYPE_CHECKING:  # pragma: no cover
    from aeutils.model import Autoencoder


def _boxed(img: np.ndarray, box: tuple[float, float, float, float], colour: tuple[int, int, int] = (0, 200, 255)) -> bytes:
    """``img`` (H x W x 3 uint8) with a 2 px rectangle ``box`` (x0, y0, x1, y1 in its pixels), as PNG bytes."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    x0, y0, x1, y1 = box
    # at least a few pixels wide, so a 181 px patch on a 100k px slide still shows
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = max(3.0, (x1 - x0) / 2), max(3.0, (y1 - y0) / 2)
    ImageDraw.Draw(im).rectangle((cx - hw, cy - hh, cx + hw, cy + hh), outline=colour, width=2)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class SlideExplorer:
    """An ipywidgets explorer of one slide through an autoencoder.

    ``slide``: a whole-slide image path. ``model``: an Autoencoder, a checkpoint path, or None (the
    shipped model). ``encoding``: the slide's ``.encoding.tiff`` (optional; shown beside the slide).
    ``level`` / ``mpp`` / ``assume_mpp`` / ``resample_filter``: the input scale, as ``extract`` and
    ``encode`` (:func:`aeutils.scale.resolve_scale`). ``size``: patch side in input px (4k+1, default 181).
    ``x``, ``y``: the first patch centre (default: the centre of the tissue).

    Controls (set ``.value`` from code, or use the mouse): ``x``, ``y`` (IntSliders, patch centre in
    input px), ``view`` (ToggleButtons over :data:`aeutils.viz.VIEWS`). ``widget`` is the whole thing
    to display; ``image`` the panel (PNG), ``thumb`` / ``map`` the thumbnails; ``renders`` counts
    redraws; ``encoded`` is the current :class:`aeutils.encoding.EncodedBatch` (one patch).
    """

    def __init__(
        self,
        slide: str | os.PathLike[str],
        model: "Autoencoder | str | os.PathLike[str] | None" = None,
        *,
        encoding: str | os.PathLike[str] | None = None,
        level: int | None = None,
        mpp: float | None = None,
        assume_mpp: float | None = None,
        resample_filter: str | None = None,
        size: int = 181,
        thumb_side: int = 360,
        x: int | None = None,
        y: int | None = None,
        view: str = "stretch",
        size_px: tuple[int, int] = (1000, 340),
    ) -> None:
        import ipywidgets as w

        from aeutils.checkpoint import load_model
        from aeutils.model import check_size
        from aeutils.scale import resolve_scale
        from aeutils.slides import open_slide
        from aeutils.tissue import tissue_mask
        from aeutils.viz import VIEW_LABELS, VIEWS, PatchPanel

        check_size(size, size)
        self.model = load_model(model)
        self.size = int(size)
        self.slide = open_slide(slide)
        self.choice = resolve_scale(self.slide, level=level, mpp=mpp, assume_mpp=assume_mpp, filter=resample_filter)
        self.mpp = self.choice.mpp
        self.width, self.height = self.choice.output_dimensions
        if self.size > min(self.width, self.height):
            raise PatchError(f"{self.slide.path}: patch size {size} px is larger than the slide at this scale "
                             f"({self.width} x {self.height} px)")
        thumb = self.slide.thumbnail(thumb_side)
        self._thumb = thumb
        #: thumbnail pixels per input pixel (x, y)
        self.thumb_scale = (thumb.shape[1] / self.width, thumb.shape[0] / self.height)
        self._map: np.ndarray | None = None
        self.map_scale = (0.0, 0.0)
        if encoding is not None:
            with open_slide(encoding) as e:
                m = e.thumbnail(thumb_side)
                ew, eh = e.dimensions
            self._map = m
            # the map is 4x coarser than the input: its (ew, eh) px span the input's (4 ew, 4 eh)
            self.map_scale = (m.shape[1] / (4 * ew), m.shape[0] / (4 * eh))
        if x is None or y is None:
            mask, _ = tissue_mask(thumb)
            if mask.any():
                ys, xs = np.nonzero(mask)  # row-major order
                i = len(xs) // 2  # the middle tissue pixel: always tissue (a centroid can fall in a hole)
                tx, ty = xs[i], ys[i]
                x = int((tx + 0.5) / self.thumb_scale[0]) if x is None else x
                y = int((ty + 0.5) / self.thumb_scale[1]) if y is None else y
            x = self.width // 2 if x is None else x
            y = self.height // 2 if y is None else y
        half = self.size // 2
        style, wide = {"description_width": "60px"}, w.Layout(width="520px")
        self.x = w.IntSlider(value=int(np.clip(x, half, self.width - half - 1)), min=half, max=self.width - half - 1,
                             description="x", continuous_update=False, style=style, layout=wide)
        self.y = w.IntSlider(value=int(np.clip(y, half, self.height - half - 1)), min=half, max=self.height - half - 1,
                             description="y", continuous_update=False, style=style, layout=wide)
        self.view = w.ToggleButtons(options=[(VIEW_LABELS[v].split(" (")[0], v) for v in VIEWS], value=view,
                                    style={"button_width": "170px"})
        self.thumb = w.Image(format="png")
        self.map = w.Image(format="png")
        self.image = w.Image(format="png", layout=w.Layout(width=f"{size_px[0]}px", max_width="100%"))
        self.status = w.HTML()
        self.panel = PatchPanel(size_px=size_px)
        self.renders = 0
        self._hold = False
        self.encoded: Any = None
        scale = f"{self.mpp:.4g} \u00b5m/px" if self.mpp else "scale unknown"
        self._events = self._connect_clicks()
        how = "click or use the sliders" if self._events else "use the sliders; clicks need the ipyevents package"
        self.thumb.add_class("mscopy-slide-thumb")
        self.map.add_class("mscopy-slide-map")
        pictures = [w.VBox([w.HTML(f"<b>slide</b> ({how})"), self.thumb])]
        if self._map is not None:
            pictures.append(w.VBox([w.HTML("<b>encoding map</b>"), self.map]))
        self.widget = w.VBox([
            w.HTML(f"<b>Slide explorer</b>: {self.slide.path.name}, {self.width} x {self.height} px at {scale}, "
                   f"{self.size} px patches"),
            w.HBox(pictures), self.x, self.y, self.view, self.image, self.status,
        ])
        self.widget.add_class("mscopy-slide-explorer")
        self.x.observe(self._on_move, names="value")
        self.y.observe(self._on_move, names="value")
        self.view.observe(self._on_view, names="value")
        self.redraw()

    # ------------------------------------------------------------------------------------- callbacks
    def _connect_clicks(self) -> list[Any]:
        """Mouse clicks on the thumbnails (with ``ipyevents``; without it, ``[]`` and sliders only)."""
        try:
            from ipyevents import Event  # type: ignore[import-not-found]
        except ImportError:
            return []
        events = []
        for target, which in ((self.thumb, "slide"), (self.map, "map")):
            ev = Event(source=target, watched_events=["click"])
            ev.on_dom_event(lambda e, which=which: self.click(e["dataX"], e["dataY"], which))
            events.append(ev)
        return events

    def click(self, px: float, py: float, on: str = "slide") -> None:
        """A click at thumbnail pixel (``px``, ``py``) of the slide (``on="slide"``) or the map
        (``on="map"``): moves the patch centre there (one redraw)."""
        sx, sy = self.thumb_scale if on == "slide" else self.map_scale
        if on not in ("slide", "map") or sx <= 0:
            raise PatchError(f"cannot click on {on!r}: choose 'slide'" + (" or 'map'" if self._map is not None else ""))
        self._hold = True
        try:
            self.x.value = int(np.clip(round((px + 0.5) / sx), self.x.min, self.x.max))
            self.y.value = int(np.clip(round((py + 0.5) / sy), self.y.min, self.y.max))
        finally:
            self._hold = False
        self.redraw()

    def _on_move(self, _change: dict[str, Any]) -> None:
        if not self._hold:
            self.redraw()

    def _on_view(self, _change: dict[str, Any]) -> None:
        self.redraw(reencode=False)

    # ------------------------------------------------------------------------------------- drawing
    def patch_origin(self) -> tuple[int, int]:
        """Top-left input pixel of the current patch."""
        half = self.size // 2
        return self.x.value - half, self.y.value - half

    def read_patch(self) -> np.ndarray:
        """The current patch: size x size x 3 uint8 RGB at the chosen scale."""
        from aeutils.scale import read_scaled

        x0, y0 = self.patch_origin()
        return read_scaled(self.slide, self.choice, x0, y0, self.size, self.size)

    def redraw(self, reencode: bool = True) -> bytes:
        """Re-read and re-encode the patch (unless only the view changed), redraw; returns the panel PNG."""
        from aeutils.encoding import encode_batch, rgb_batch
        from aeutils.viz import figure_png, patch_panel

        if reencode or self.encoded is None:
            self.encoded = encode_batch(self.model, rgb_batch(self.read_patch()))
        e = self.encoded
        patch_panel(e.inputs[0], e.latent[0], e.outputs[0], view=self.view.value, mpp=self.mpp, panel=self.panel)
        png = figure_png(self.panel.figure)
        self.image.value = png
        x0, y0 = self.patch_origin()
        box = (x0, y0, x0 + self.size, y0 + self.size)
        sx, sy = self.thumb_scale
        self.thumb.value = _boxed(self._thumb, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
        if self._map is not None:
            mx, my = self.map_scale
            self.map.value = _boxed(self._map, (box[0] * mx, box[1] * my, box[2] * mx, box[3] * my), (255, 80, 0))
        self.renders += 1
        self.status.value = (
            f"patch centre ({self.x.value}, {self.y.value}) px &middot; PSNR {float(e.psnr[0]):.2f} dB &middot; "
            f"SSIM {float(e.ssim[0]):.3f} &middot; view {self.view.value}"
        )
        return png

    def close(self) -> None:
        """Close the slide."""
        self.slide.close()

    def _ipython_display_(self) -> None:  # pragma: no cover - exercised in notebooks
        from IPython.display import display

        display(self.widget)
