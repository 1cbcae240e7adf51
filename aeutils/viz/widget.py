"""The ipywidgets patch explorer (:class:`Explorer`, :func:`explore`): a batch encoded once up
front, controls that only re-render one reused :class:`~aeutils.viz.figures.PatchPanel`."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from aeutils.encoding import EncodedBatch, encode_batch
from aeutils.errors import PatchError
from aeutils.viz.figures import PatchPanel, load_patch_source, figure_png
from aeutils.viz.views import TAP_STRIDE, VIEW_LABELS, VIEWS, two_line_scale, describe_scale, encoding_view

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from aeutils.model import Autoencoder


class Explorer:
    """An ipywidgets explorer of a batch of patches through an autoencoder.

    ``patches``: a tensor (Nx3xSxS in [0, 1]), an extraction folder (manifest.csv), a folder of
    images, None for the held-out patches of the bundled sample slide, or an :class:`EncodedBatch`
    from :func:`encode_batch` (then ``model`` is not used). At most ``n`` patches. ``model``: an
    :class:`~aeutils.model.Autoencoder`, a checkpoint path, or None for the shipped model.
    Everything is encoded once up front; moving a control only re-renders one reused figure into
    ``image`` (an ``ipywidgets.Image``): no flicker, no new figures.

    Controls (set ``.value`` from code, or use mouse / keyboard: sliders take arrow keys):
        ``index``        IntSlider, the patch shown, numbered 1..N as in the panel title ("patch 6/16"
                         is ``index.value == 6``, i.e. ``encoded.inputs[5]``: :attr:`position`)
        ``view``         ToggleButtons, the encoding view (:data:`VIEWS`)
        ``percentiles``  FloatRangeSlider, (low, high) percentiles of the ``stretch`` view
        ``tap``          Dropdown over the encoder taps (latent, stage1, stage2, stage3); ``stage``
                         is its deprecated old name
        ``channel``      IntSlider over the chosen tap's channels
    ``widget`` is the whole thing (a VBox) to display; ``renders`` counts redraws.
    """

    def __init__(
        self,
        patches: "torch.Tensor | str | os.PathLike[str] | EncodedBatch | None" = None,
        model: "Autoencoder | str | os.PathLike[str] | None" = None,
        *,
        n: int = 16,
        size: int = 181,
        mpp: float | None = None,
        view: str = "raw",
        size_px: tuple[int, int] = (1000, 340),
    ) -> None:
        import ipywidgets as w

        from aeutils.model import TAPS

        if isinstance(patches, EncodedBatch):  # already encoded (e.g. in a notebook): reuse, don't recompute
            self.model, self.mpp = model, mpp
            self.encoded = patches
            if "latent" not in self.encoded.features:
                self.encoded.features = {**self.encoded.features, "latent": self.encoded.latent}
        else:
            from aeutils.checkpoint import load_model

            self.model = load_model(model)
            x, self.mpp = load_patch_source(patches, n, size, mpp)
            if x.shape[0] == 0:
                raise PatchError("no patches to explore")
            self.encoded = encode_batch(self.model, x, features=True)
        x = self.encoded.inputs
        self.panel = PatchPanel(size_px=size_px)
        self.renders = 0
        n_items = x.shape[0]
        style = {"description_width": "90px"}
        wide = w.Layout(width="520px")
        self.index = w.IntSlider(  # numbered from 1, like the title and the status line
            value=1, min=1, max=n_items, step=1, description="patch", continuous_update=True,
            style=style, layout=wide, tooltip=f"patch number, 1 to {n_items} (arrow keys move by one)",
        )
        self.view = w.ToggleButtons(
            options=[(VIEW_LABELS[v].split(" (")[0], v) for v in VIEWS], value=view,
            tooltips=[VIEW_LABELS[v] for v in VIEWS], style={"button_width": "170px"},
        )
        self.percentiles = w.FloatRangeSlider(
            value=(2.0, 98.0), min=0.0, max=100.0, step=0.5, description="percentiles", continuous_update=False,
            readout_format=".1f", style=style, layout=wide,
        )
        taps = [t for t in ("latent",) + tuple(t for t in TAPS if t != "latent") if t in self.encoded.features]
        self.tap = w.Dropdown(options=taps, value="latent", description="encoder tap", style=style)
        self.channel = w.IntSlider(
            value=0, min=0, max=0, description="channel", continuous_update=True, style=style, layout=wide,
        )
        self.image = w.Image(format="png", layout=w.Layout(width=f"{size_px[0]}px", max_width="100%"))
        self.image.add_class("mscopy-explorer-panel")
        self.status = w.HTML()
        self.widget = w.VBox(
            [
                w.HTML(f"<b>Encoding explorer</b>: {n_items} patches, {describe_scale(x.shape[1:], self.mpp)}"),
                self.index,
                w.HBox([w.Label("view", layout=w.Layout(width="90px")), self.view]),
                self.percentiles,
                w.HBox([self.tap, self.channel]),
                self.image,
                self.status,
            ]
        )
        self.widget.add_class("mscopy-explorer")
        for control in (self.index, self.view, self.percentiles, self.channel):
            control.observe(self._on_change, names="value")
        self.tap.observe(self._on_tap, names="value")
        self._sync_enabled()
        self.redraw()

    # The callbacks: cheap, everything heavy was done in __init__.
    def _on_change(self, _change: dict[str, Any]) -> None:
        self._sync_enabled()
        self.redraw()

    def _on_tap(self, change: dict[str, Any]) -> None:
        channels = self.encoded.features[change["new"]].shape[1]
        with self.channel.hold_trait_notifications():
            self.channel.value = min(self.channel.value, channels - 1)
            self.channel.max = channels - 1
        self._sync_enabled()
        self.redraw()

    def _sync_enabled(self) -> None:
        self.percentiles.disabled = self.view.value != "stretch"
        self.channel.disabled = self.encoded.features[self.tap.value].shape[1] == 1

    @property
    def position(self) -> int:
        """The 0-based batch index of the patch shown (``index.value - 1``; the slider counts from 1)."""
        return self.index.value - 1

    @property
    def stage(self) -> Any:
        """Deprecated old name of the ``tap`` Dropdown (``DeprecationWarning``)."""
        import warnings

        warnings.warn("Explorer.stage is deprecated: use Explorer.tap", DeprecationWarning, stacklevel=2)
        return self.tap

    def current_map(self) -> tuple[np.ndarray, str]:
        """(the view of the selected map, hxw in [0, 1]; its title)."""
        i, tap, c = self.position, self.tap.value, self.channel.value
        fmap = self.encoded.features[tap][i, c]
        low, high = self.percentiles.value
        shape = tuple(self.encoded.features[tap].shape[1:])
        what = "encoding" if tap == "latent" else f"{tap} channel {c}"
        scale = describe_scale(shape, self.mpp, TAP_STRIDE[tap])
        return encoding_view(fmap, self.view.value, low, high), f"{what}, {self.view.value}\n{two_line_scale(scale)}"

    def redraw(self) -> bytes:
        """Re-render the panel for the current control values into ``image``; returns the PNG."""
        i, number = self.position, self.index.value
        e = self.encoded
        view_map, enc_title = self.current_map()
        self.panel.update(
            e.inputs[i], view_map, e.outputs[i],
            psnr_db=float(e.psnr[i]), ssim_value=float(e.ssim[i]),
            input_title=f"input\n{two_line_scale(describe_scale(e.inputs.shape[1:], self.mpp))}",
            encoding_title=enc_title,
            title=f"patch {number}/{e.inputs.shape[0]}: ",
        )
        png = figure_png(self.panel.figure)
        self.image.value = png
        self.renders += 1
        self.status.value = (
            f"patch {number} of {e.inputs.shape[0]} &middot; PSNR {float(e.psnr[i]):.2f} dB &middot; "
            f"SSIM {float(e.ssim[i]):.3f} &middot; view {self.view.value}"
        )
        return png

    def _ipython_display_(self) -> None:  # pragma: no cover - exercised in notebooks
        from IPython.display import display

        display(self.widget)


def explore(
    patches: "torch.Tensor | str | os.PathLike[str] | None" = None,
    model: "Autoencoder | str | os.PathLike[str] | None" = None,
    **kwargs: Any,
) -> Explorer:
    """Build an :class:`Explorer` (see there); display it by making it a cell's value."""
    return Explorer(patches, model, **kwargs)
