"""Looking at encodings: views, batch grids, a per-patch panel, the ipywidgets explorer, and the
``figures`` command (the README images).

Shapes and scales (the shipped model, 181 px patches at level 0 of the sample slide):

    input           Nx3x181x181 RGB in [0, 1], 0.499 um/px (level 0; x downsample at other levels)
    stage1          Nx64x91x91 features, 2x the input pixel size
    stage2, stage3  Nx32x46x46, Nx8x46x46 features, 4x the input pixel size
    encoding        Nx1x46x46 unbounded floats, 4x the input pixel size (1.996 um/px)
    reconstruction  Nx3x181x181 RGB in [0, 1]

An encoding is an unbounded float map; :func:`encoding_view` maps it to [0, 1] for display
(raw min-max, percentile stretch, histogram equalisation, CLAHE). All figures here are
``matplotlib.figure.Figure`` objects that are not registered with pyplot, so nothing leaks: a
notebook displays them when they are a cell's value, the CLI saves them.

``import aeutils`` does not import this module; torch is imported inside the functions that need it.
"""
from __future__ import annotations

import argparse
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from aeutils.errors import AeutilsError, PatchError
from aeutils.io import atomic_write_bytes
from aeutils.sample import SAMPLE_MPP

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from aeutils.model import Autoencoder

#: the encoding views understood by :func:`encoding_view`
VIEWS: tuple[str, ...] = ("raw", "stretch", "equalize", "clahe")
VIEW_LABELS: dict[str, str] = {
    "raw": "raw (min-max)",
    "stretch": "linear stretch (percentiles)",
    "equalize": "histogram equalisation",
    "clahe": "CLAHE (adaptive equalisation)",
}
#: input pixels per encoding pixel (two stride-2 convolutions)
ENCODING_STRIDE = 4
#: pixel stride of each encoder tap relative to the input
STAGE_STRIDE: dict[str, int] = {"stage1": 2, "stage2": 4, "stage3": 4, "latent": 4}
#: file names written by :func:`write_figures`, in order
FIGURE_FILES: tuple[str, ...] = (
    "ae_in.png",
    "ae_en.png",
    "ae_en_lin.png",
    "ae_en_he.png",
    "ae_out.png",
    "sample_slides.png",
)
#: PNG width of the grid figures (their height follows the grid's aspect) and size of ``sample_slides.png``
GRID_FIGURE_WIDTH = 800
_TITLE_PX = 70
SLIDES_FIGURE_PX: tuple[int, int] = (1400, 760)
_DPI = 100
_EQ_BINS = 4096
_PNG_META = {"Software": None}  # no matplotlib version in the file: same bytes on every install


# --------------------------------------------------------------------------------------------- views
def _as_2d(z: Any) -> np.ndarray:
    """A single map as a float64 HxW array (accepts HxW or 1xHxW, numpy or torch)."""
    if hasattr(z, "detach"):
        z = z.detach().float().cpu().numpy()
    a = np.asarray(z, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected one HxW (or 1xHxW) map, got shape {a.shape}")
    return a


def encoding_view(z: Any, view: str = "raw", low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """One encoding (or feature map) ``z`` (HxW or 1xHxW floats) as an HxW float64 image in [0, 1].

    Views:
        ``raw``       min-max: the lowest value black, the highest white (linear, nothing clipped).
        ``stretch``   linear contrast stretch: the ``low``-th percentile black, the ``high``-th white,
                      values outside clipped (``skimage.exposure.rescale_intensity``).
        ``equalize``  histogram equalisation (``skimage.exposure.equalize_hist``, 4096 bins): a flat
                      histogram, the lowest value black and the highest white.
        ``clahe``     contrast-limited adaptive equalisation (``skimage.exposure.equalize_adapthist``,
                      tiles of 1/8 of the side) of the min-max view.
    A constant map gives all zeros. ``low``/``high`` are percentiles in [0, 100] (only ``stretch``
    uses them).
    """
    from skimage import exposure

    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}: choose from {', '.join(VIEWS)}")
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles need 0 <= low < high <= 100, got low={low}, high={high}")
    a = _as_2d(z)
    lo, hi = float(a.min()), float(a.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("the map holds non-finite values")
    if hi <= lo:
        return np.zeros_like(a)
    if view == "raw":
        return (a - lo) / (hi - lo)
    if view == "stretch":
        p_lo, p_hi = np.percentile(a, [low, high])
        if p_hi <= p_lo:  # a (nearly) constant stretch window: fall back to min-max
            p_lo, p_hi = lo, hi
        return exposure.rescale_intensity(a, in_range=(float(p_lo), float(p_hi)), out_range=(0.0, 1.0))
    if view == "equalize":  # fine bins: an outlier must not squash everything else into one bin
        eq = exposure.equalize_hist(a, nbins=_EQ_BINS)
        return (eq - eq.min()) / (eq.max() - eq.min())
    return np.clip(exposure.equalize_adapthist((a - lo) / (hi - lo)), 0.0, 1.0)


def encoding_views(z: "torch.Tensor", view: str = "raw", low: float = 2.0, high: float = 98.0) -> "torch.Tensor":
    """:func:`encoding_view` of each map of a batch ``z`` (Nx1xhxw): an Nx1xhxw float32 tensor in
    [0, 1]. Each encoding is scaled on its own (its own min/max, percentiles, histogram)."""
    import torch

    if z.ndim != 4 or z.shape[1] != 1:
        raise ValueError(f"expected an Nx1xhxw batch of encodings, got shape {tuple(z.shape)}")
    out = [torch.from_numpy(encoding_view(m, view, low, high)).float() for m in z[:, 0].detach().cpu()]
    return torch.stack(out).unsqueeze(1)


# --------------------------------------------------------------------------------------------- scale
def describe_scale(shape: Sequence[int], mpp: float | None, stride: int = 1) -> str:
    """'3x181x181 px, 0.499 um/px (90.3 um)' for a CxHxW item at ``mpp * stride`` microns per pixel."""
    dims = "x".join(str(int(s)) for s in shape)
    if mpp is None:
        return f"{dims} px, pixel size unknown"
    px = mpp * stride
    side = px * int(shape[-1])
    return f"{dims} px, {px:.4g} \u00b5m/px ({side:.0f} \u00b5m wide)"


def _two_lines(scale: str) -> str:
    """'3x181x181 px, 0.499 um/px (90 um wide)' -> shape and pixel size on two lines (panel titles)."""
    return scale.replace(", ", "\n", 1)


# --------------------------------------------------------------------------------------------- model
@dataclass
class Encoded:
    """A batch and what the model makes of it (all on the CPU, float32).

    ``inputs`` Nx3xSxS in [0, 1]; ``latent`` Nx1xsxs (s = (S+3)/4); ``outputs`` Nx3xSxS in [0, 1];
    ``features`` the encoder taps keyed by :data:`aeutils.model.STAGES` (only when asked for);
    ``psnr`` (dB) and ``ssim`` per image (length N).
    """

    inputs: "torch.Tensor"
    latent: "torch.Tensor"
    outputs: "torch.Tensor"
    psnr: "torch.Tensor"
    ssim: "torch.Tensor"
    features: dict[str, "torch.Tensor"] = field(default_factory=dict)


def encode_batch(
    model: "Autoencoder", x: "torch.Tensor", *, features: bool = False, batch_size: int = 16, speed: str | None = None
) -> Encoded:
    """Run ``model`` (eval mode, no grad) on ``x`` (Nx3xSxS in [0, 1]) in chunks of ``batch_size``.

    Returns :class:`Encoded` (float32 tensors on the CPU); with ``features=True`` it also keeps every
    encoder stage's maps. ``speed``: None (default) runs as :func:`aeutils.speed.inference_choice`
    decides for this chunk shape (fp32 until enough chunks were encoded in this process for its probe
    to pay; a few figures' worth never probes), or a candidate name of :data:`aeutils.speed.CANDIDATES`
    to force one (also ``$MSCOPY_CPU_SPEED``). The model is never modified.
    """
    import torch

    from aeutils import speed as _speed
    from aeutils.metrics import psnr, ssim

    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an Nx3xSxS batch of RGB patches in [0, 1], got shape {tuple(x.shape)}")
    if speed is not None and speed not in _speed.CANDIDATES:
        raise ValueError(f"speed must be None or one of {_speed.CANDIDATES}, got {speed!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    zs, ys, feats = [], [], {}
    chunk_shape = (min(batch_size, max(1, x.shape[0])), *x.shape[1:])
    try:
        choice = _speed.inference_choice(
            model, chunk_shape, device, expected_batches=-(-x.shape[0] // batch_size), force=speed,
            run=lambda xb, c: _speed.forward(lambda t: model.decode(model.encode(t)), xb, c),
        )
        with torch.inference_mode(), _speed.running(choice, device):
            for chunk in x.split(batch_size):
                xb = _speed.prepare(chunk.to(device=device, dtype=torch.float32), choice)
                if features:
                    f = model.encode_features(xb)
                    for k, v in f.items():
                        feats.setdefault(k, []).append(v.float().contiguous().cpu())
                    z = f["latent"]
                else:
                    z = model.encode(xb)
                ys.append(model.decode(z).float().contiguous().cpu())
                zs.append(z.float().contiguous().cpu())
    finally:
        model.train(was_training)
    inputs = x.detach().float().cpu()
    latent, outputs = torch.cat(zs), torch.cat(ys)
    return Encoded(
        inputs=inputs,
        latent=latent,
        outputs=outputs,
        psnr=psnr(outputs, inputs),
        ssim=ssim(outputs, inputs),
        features={k: torch.cat(v) for k, v in feats.items()},
    )


def _manifest_mpp(source: Path) -> float | None:
    """The one ``mpp`` of an extraction folder's manifest.csv (None if absent, unknown or mixed)."""
    from aeutils.patches import MANIFEST_NAME, read_manifest

    if not (source / MANIFEST_NAME).is_file():
        return None
    values = {row["mpp"] for row in read_manifest(source)}
    return values.pop() if len(values) == 1 else None


def _load_patches(
    patches: "torch.Tensor | str | os.PathLike[str] | None", n: int, size: int, mpp: float | None
) -> tuple["torch.Tensor", float | None]:
    """(Nx3xSxS patches in [0, 1], um/px) from a tensor, an extraction dir, a folder, or None
    (the held-out patches of the bundled sample slide at 0.499 um/px)."""
    from aeutils import data

    if patches is None:
        return data.sample_patches(n=n, size=size, split="val", seed=0), (SAMPLE_MPP if mpp is None else mpp)
    if isinstance(patches, (str, os.PathLike)):
        patches = Path(patches)
        if mpp is None and patches.is_dir():
            mpp = _manifest_mpp(patches)
    return data.load_patches(patches, n=n, size=size), mpp  # tensors may also be 3xHxW or uint8; centre crop


# --------------------------------------------------------------------------------------------- grids
def batch_grid(images: "torch.Tensor", nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> "torch.Tensor":
    """A 3xHxW grid image of a batch (NxCxhxw, C = 1 or 3, values in [0, 1]) with
    ``torchvision.utils.make_grid``: ``nrow`` images per row (default: a square-ish grid),
    ``padding`` pixels of ``pad_value`` (white) between them."""
    import math

    from torchvision.utils import make_grid

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected an NxCxHxW batch with C = 1 or 3, got shape {tuple(images.shape)}")
    n = images.shape[0]
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    return make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=padding, pad_value=pad_value)


def _new_figure(size_px: tuple[int, int]) -> Figure:
    fig = Figure(figsize=(size_px[0] / _DPI, size_px[1] / _DPI), dpi=_DPI)
    return fig


def grid_figure_size(grid_hw: tuple[int, int], width: int = GRID_FIGURE_WIDTH) -> tuple[int, int]:
    """(width, height) in pixels of a :func:`grid_figure` for a grid image of ``grid_hw`` pixels."""
    inner = width - 2 * 16
    return width, int(round(inner * grid_hw[0] / grid_hw[1])) + _TITLE_PX + 16


def grid_figure(
    images: "torch.Tensor", title: str, *, nrow: int | None = None, cmap: str = "gray", width: int = GRID_FIGURE_WIDTH
) -> Figure:
    """A figure ``width`` pixels wide (100 dpi; height from :func:`grid_figure_size`) of
    :func:`batch_grid` with a (two-line) ``title`` above it.

    One-channel batches are drawn in ``cmap`` with nearest-neighbour pixels, so the 46x46 encodings
    stay visibly pixelated at the same display size as the 181x181 inputs.
    """
    grid = batch_grid(images, nrow=nrow)
    w, h = grid_figure_size((grid.shape[1], grid.shape[2]), width)
    fig = _new_figure((w, h))
    ax = fig.add_axes((16 / w, 16 / h, 1 - 32 / w, 1 - (_TITLE_PX + 16) / h))
    if images.shape[1] == 1:
        ax.imshow(grid[0].numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="antialiased")
    ax.set_axis_off()
    fig.suptitle(title, y=1 - 8 / h, va="top", fontsize=12)
    return fig


def input_grid_figure(
    x: "torch.Tensor", mpp: float | None = SAMPLE_MPP, title: str = "Input patches", note: str | None = None
) -> Figure:
    """Grid of input (or reconstructed) patches Nx3xSxS, titled with the true shape and pixel size
    (and ``note`` on a second line)."""
    text = f"{title}: {x.shape[0]} x {describe_scale(x.shape[1:], mpp)}"
    return grid_figure(x, text + (f"\n{note}" if note else ""))


def encoding_grid_figure(
    z: "torch.Tensor", view: str = "raw", mpp: float | None = SAMPLE_MPP, low: float = 2.0, high: float = 98.0
) -> Figure:
    """Grid of encodings Nx1xsxs shown with :func:`encoding_view` ``view`` (each scaled on its own);
    the title gives the true shape and the encoding pixel size (4x the input's ``mpp``)."""
    label = VIEW_LABELS[view] if view in VIEW_LABELS else view
    if view == "stretch":
        label = f"linear stretch, percentiles {low:g}-{high:g}"
    scale = describe_scale(z.shape[1:], mpp, ENCODING_STRIDE)
    return grid_figure(encoding_views(z, view, low, high), f"Encodings, {label}:\n{z.shape[0]} x {scale}")


def figure_png(fig: Figure, dpi: int = _DPI) -> bytes:
    """The figure as PNG bytes (Agg, fixed size, no software/version metadata: reproducible)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata=_PNG_META)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- panel
def _rgb(x: "torch.Tensor") -> np.ndarray:
    return x.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


def error_map(x: "torch.Tensor", y: "torch.Tensor") -> np.ndarray:
    """Per-pixel absolute error |y - x| averaged over RGB: HxW float in [0, 1] (``x``, ``y`` 3xHxW)."""
    return (y.detach().float().cpu() - x.detach().float().cpu()).abs().mean(0).numpy()


class PatchPanel:
    """One reusable 4-panel figure: input | encoding view | reconstruction | error map.

    :meth:`update` swaps the image data in place (no new figure, no new axes), so redrawing costs
    one Agg render. The figure is not a pyplot figure: nothing to close, nothing leaks.
    """

    def __init__(self, size_px: tuple[int, int] = (1000, 340), error_max: float = 0.25) -> None:
        self.error_max = error_max
        self.figure = _new_figure(size_px)
        axes = self.figure.subplots(1, 4, gridspec_kw={"left": 0.01, "right": 0.95, "bottom": 0.02, "top": 0.74, "wspace": 0.08})
        self.axes = list(axes)
        blank_rgb, blank = np.zeros((5, 5, 3)), np.zeros((5, 5))
        self._im = [
            axes[0].imshow(blank_rgb),
            axes[1].imshow(blank, cmap="gray", vmin=0, vmax=1, interpolation="nearest"),
            axes[2].imshow(blank_rgb),
            axes[3].imshow(blank, cmap="magma", vmin=0, vmax=error_max, interpolation="nearest"),
        ]
        for ax in axes:
            ax.set_axis_off()
        cax = self.figure.add_axes((0.955, 0.06, 0.01, 0.62))
        self.figure.colorbar(self._im[3], cax=cax)
        cax.tick_params(labelsize=7)
        self._suptitle = self.figure.suptitle("", fontsize=11, y=0.985)

    def update(
        self,
        x: "torch.Tensor",
        view_map: np.ndarray,
        y: "torch.Tensor",
        *,
        psnr_db: float,
        ssim_value: float,
        encoding_title: str,
        input_title: str,
        title: str = "",
    ) -> Figure:
        """Show input ``x`` (3xSxS), ``view_map`` (hxw in [0, 1], already a view), output ``y``."""
        err = error_map(x, y)
        for im, data in zip(self._im, (_rgb(x), view_map, _rgb(y), err)):
            im.set_data(data)
            im.set_extent((-0.5, data.shape[1] - 0.5, data.shape[0] - 0.5, -0.5))
        for ax in self.axes:
            ax.set_xlim(-0.5, ax.images[0].get_array().shape[1] - 0.5)
            ax.set_ylim(ax.images[0].get_array().shape[0] - 0.5, -0.5)
        self.axes[0].set_title(input_title, fontsize=9)
        self.axes[1].set_title(encoding_title, fontsize=9)
        self.axes[2].set_title("reconstruction\nsame shape as the input\nRGB in [0, 1]", fontsize=9)
        self.axes[3].set_title(f"|error|, mean over RGB\nper pixel, max {err.max():.2f}\n(colour scale 0-{self.error_max:g})", fontsize=9)
        self._suptitle.set_text(f"{title}PSNR {psnr_db:.2f} dB, SSIM {ssim_value:.3f}")
        return self.figure


def patch_panel(
    x: "torch.Tensor",
    z: "torch.Tensor",
    y: "torch.Tensor",
    *,
    view: str = "raw",
    low: float = 2.0,
    high: float = 98.0,
    mpp: float | None = SAMPLE_MPP,
    panel: PatchPanel | None = None,
) -> Figure:
    """The per-patch panel figure for input ``x`` (3xSxS), encoding ``z`` (1xsxs) and
    reconstruction ``y`` (3xSxS): input | encoding (``view``) | reconstruction | error map, with
    PSNR (dB) and SSIM of ``y`` against ``x`` (:mod:`aeutils.metrics`) in the title.
    Pass ``panel`` to redraw an existing :class:`PatchPanel` in place."""
    from aeutils.metrics import psnr, ssim

    p = float(psnr(y.unsqueeze(0), x.unsqueeze(0))[0])
    s = float(ssim(y.unsqueeze(0), x.unsqueeze(0))[0])
    panel = panel or PatchPanel()
    return panel.update(
        x,
        encoding_view(z, view, low, high),
        y,
        psnr_db=p,
        ssim_value=s,
        input_title=f"input\n{_two_lines(describe_scale(x.shape, mpp))}",
        encoding_title=f"encoding, {view}\n{_two_lines(describe_scale(z.shape, mpp, ENCODING_STRIDE))}",
    )


# --------------------------------------------------------------------------------------------- explorer
class Explorer:
    """An ipywidgets explorer of a batch of patches through an autoencoder.

    ``patches``: a tensor (Nx3xSxS in [0, 1]), an extraction folder (manifest.csv), a folder of
    images, None for the held-out patches of the bundled sample slide, or an :class:`Encoded`
    from :func:`encode_batch` (then ``model`` is not used). At most ``n`` patches. ``model``: an
    :class:`~aeutils.model.Autoencoder`, a checkpoint path, or None for the shipped model.
    Everything is encoded once up front; moving a control only re-renders one reused figure into
    ``image`` (an ``ipywidgets.Image``): no flicker, no new figures.

    Controls (set ``.value`` from code, or use mouse / keyboard: sliders take arrow keys):
        ``index``        IntSlider, the patch shown
        ``view``         ToggleButtons, the encoding view (:data:`VIEWS`)
        ``percentiles``  FloatRangeSlider, (low, high) percentiles of the ``stretch`` view
        ``stage``        Dropdown over the encoder taps (latent, stage1, stage2, stage3)
        ``channel``      IntSlider over the chosen stage's channels
    ``widget`` is the whole thing (a VBox) to display; ``renders`` counts redraws.
    """

    def __init__(
        self,
        patches: "torch.Tensor | str | os.PathLike[str] | Encoded | None" = None,
        model: "Autoencoder | str | os.PathLike[str] | None" = None,
        *,
        n: int = 16,
        size: int = 181,
        mpp: float | None = None,
        view: str = "raw",
        size_px: tuple[int, int] = (1000, 340),
    ) -> None:
        import ipywidgets as w

        from aeutils.model import STAGES

        if isinstance(patches, Encoded):  # already encoded (e.g. in a notebook): reuse, don't recompute
            self.model, self.mpp = model, mpp
            self.encoded = patches
            if "latent" not in self.encoded.features:
                self.encoded.features = {**self.encoded.features, "latent": self.encoded.latent}
        else:
            from aeutils.checkpoint import as_model

            self.model = as_model(model)
            x, self.mpp = _load_patches(patches, n, size, mpp)
            if x.shape[0] == 0:
                raise PatchError("no patches to explore")
            self.encoded = encode_batch(self.model, x, features=True)
        x = self.encoded.inputs
        self.panel = PatchPanel(size_px=size_px)
        self.renders = 0
        n_items = x.shape[0]
        style = {"description_width": "90px"}
        wide = w.Layout(width="520px")
        self.index = w.IntSlider(
            value=0, min=0, max=n_items - 1, step=1, description="patch", continuous_update=True,
            style=style, layout=wide, tooltip="patch index (arrow keys move by one)",
        )
        self.view = w.ToggleButtons(
            options=[(VIEW_LABELS[v].split(" (")[0], v) for v in VIEWS], value=view,
            tooltips=[VIEW_LABELS[v] for v in VIEWS], style={"button_width": "170px"},
        )
        self.percentiles = w.FloatRangeSlider(
            value=(2.0, 98.0), min=0.0, max=100.0, step=0.5, description="percentiles", continuous_update=False,
            readout_format=".1f", style=style, layout=wide,
        )
        stages = [s for s in ("latent",) + tuple(s for s in STAGES if s != "latent") if s in self.encoded.features]
        self.stage = w.Dropdown(options=stages, value="latent", description="encoder tap", style=style)
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
                w.HBox([self.stage, self.channel]),
                self.image,
                self.status,
            ]
        )
        self.widget.add_class("mscopy-explorer")
        for control in (self.index, self.view, self.percentiles, self.channel):
            control.observe(self._on_change, names="value")
        self.stage.observe(self._on_stage, names="value")
        self._sync_enabled()
        self.redraw()

    # The callbacks: cheap, everything heavy was done in __init__.
    def _on_change(self, _change: dict[str, Any]) -> None:
        self._sync_enabled()
        self.redraw()

    def _on_stage(self, change: dict[str, Any]) -> None:
        channels = self.encoded.features[change["new"]].shape[1]
        with self.channel.hold_trait_notifications():
            self.channel.value = min(self.channel.value, channels - 1)
            self.channel.max = channels - 1
        self._sync_enabled()
        self.redraw()

    def _sync_enabled(self) -> None:
        self.percentiles.disabled = self.view.value != "stretch"
        self.channel.disabled = self.encoded.features[self.stage.value].shape[1] == 1

    def current_map(self) -> tuple[np.ndarray, str]:
        """(the view of the selected map, hxw in [0, 1]; its title)."""
        i, stage, c = self.index.value, self.stage.value, self.channel.value
        fmap = self.encoded.features[stage][i, c]
        low, high = self.percentiles.value
        shape = tuple(self.encoded.features[stage].shape[1:])
        what = "encoding" if stage == "latent" else f"{stage} channel {c}"
        scale = describe_scale(shape, self.mpp, STAGE_STRIDE[stage])
        return encoding_view(fmap, self.view.value, low, high), f"{what}, {self.view.value}\n{_two_lines(scale)}"

    def redraw(self) -> bytes:
        """Re-render the panel for the current control values into ``image``; returns the PNG."""
        i = self.index.value
        e = self.encoded
        view_map, enc_title = self.current_map()
        self.panel.update(
            e.inputs[i], view_map, e.outputs[i],
            psnr_db=float(e.psnr[i]), ssim_value=float(e.ssim[i]),
            input_title=f"input\n{_two_lines(describe_scale(e.inputs.shape[1:], self.mpp))}",
            encoding_title=enc_title,
            title=f"patch {i + 1}/{e.inputs.shape[0]}: ",
        )
        png = figure_png(self.panel.figure)
        self.image.value = png
        self.renders += 1
        self.status.value = (
            f"patch {i + 1} of {e.inputs.shape[0]} &middot; PSNR {float(e.psnr[i]):.2f} dB &middot; "
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


# --------------------------------------------------------------------------------------------- README figures
def _thumbnail(slide_path: Path, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(thumbnail HxWx3 uint8, level-0 (width, height)) of a slide."""
    from aeutils.slides import open_slide

    with open_slide(slide_path) as slide:
        return slide.thumbnail(max_side), tuple(slide.dimensions)


def sample_slides_figure(x: "torch.Tensor", mpp: float | None = SAMPLE_MPP, slide_path: Path | None = None) -> Figure:
    """The bundled sample slide (thumbnail, with the held-out bottom band marked) beside a grid of
    its held-out patches ``x`` (Nx3xSxS)."""
    from matplotlib.patches import Rectangle

    from aeutils.data import VALIDATION_FRACTION
    from aeutils.sample import sample_slide

    path = slide_path or sample_slide()
    thumb, (w0, h0) = _thumbnail(path, 1024)
    fig = _new_figure(SLIDES_FIGURE_PX)
    W, H = SLIDES_FIGURE_PX
    ax_t = fig.add_axes((0.01, 0.02, 0.40, 0.86))
    ax_t.imshow(thumb)
    th, tw = thumb.shape[:2]
    y_val = (1 - VALIDATION_FRACTION) * th
    ax_t.add_patch(Rectangle((-0.5, y_val), tw, th - y_val, fill=False, edgecolor="tab:orange", linewidth=2, linestyle="--"))
    ax_t.text(tw / 2, y_val + (th - y_val) / 2, "held out", color="tab:orange", ha="center", va="center", fontsize=11,
        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8},
    )
    ax_t.set_axis_off()
    ax_t.set_title(
        f"{path.name}: {w0}x{h0} px at level 0"
        + (f", {mpp:.3g} \u00b5m/px" if mpp else "")
        + f"\n(bottom {VALIDATION_FRACTION:.0%} held out)",
        fontsize=10,
    )
    ax_g = fig.add_axes((0.44, 0.02, 0.55, 0.86))
    ax_g.imshow(batch_grid(x).permute(1, 2, 0).numpy())
    ax_g.set_axis_off()
    ax_g.set_title(f"{x.shape[0]} held-out tissue patches, {describe_scale(x.shape[1:], mpp)}", fontsize=10)
    fig.suptitle("Sample slide and patches", y=1 - 8 / H, va="top", fontsize=12)
    return fig


def write_figures(
    out: str | os.PathLike[str],
    *,
    model: "Autoencoder | str | os.PathLike[str] | None" = None,
    patches: "torch.Tensor | str | os.PathLike[str] | None" = None,
    n: int = 16,
    mpp: float | None = None,
) -> list[Path]:
    """Write the README figures (:data:`FIGURE_FILES`) into ``out``, each atomically.

    Input batch, raw encodings, linearly stretched (2-98th percentiles), histogram-equalised,
    output batch, and the sample slide with its patches. Deterministic for a given model and
    patch source (no timestamps or versions in the PNGs). Returns the paths written.
    """
    from aeutils.checkpoint import as_model

    ae = as_model(model)
    x, mpp = _load_patches(patches, n, 181, mpp)
    e = encode_batch(ae, x)
    figures = {
        "ae_in.png": input_grid_figure(
            e.inputs, mpp, "Input patches", "held-out tissue of the sample slide" if patches is None else None
        ),
        "ae_en.png": encoding_grid_figure(e.latent, "raw", mpp),
        "ae_en_lin.png": encoding_grid_figure(e.latent, "stretch", mpp),
        "ae_en_he.png": encoding_grid_figure(e.latent, "equalize", mpp),
        "ae_out.png": input_grid_figure(
            e.outputs, mpp, "Reconstructions",
            f"median PSNR {float(e.psnr.median()):.1f} dB, median SSIM {float(e.ssim.median()):.3f}",
        ),
    }
    if patches is None:
        figures["sample_slides.png"] = sample_slides_figure(e.inputs, mpp)
    out_dir = Path(out)
    written = []
    for name, fig in figures.items():
        written.append(atomic_write_bytes(out_dir / name, figure_png(fig)))
    return written


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m aeutils figures``."""
    parser.add_argument("--out", type=Path, default=Path("readme_images"), help="output folder (default: readme_images)")
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="model checkpoint (default: the shipped model, or $MSCOPY_PRETRAINED)",
    )
    parser.add_argument("--n", type=int, default=16, help="patches per grid (default 16)")
    parser.add_argument(
        "--patches", type=Path, default=None,
        help="patch source: an extraction folder or a folder of images (default: held-out patches of the "
        "bundled sample slide; sample_slides.png is only made for the default)",
    )


def run_cli(args: argparse.Namespace) -> int:
    """Write the figures; prints one line per file. Returns 0."""
    if args.n < 1:
        raise AeutilsError(f"--n must be at least 1, got {args.n}")
    if args.checkpoint is not None and not Path(args.checkpoint).exists():
        from aeutils.errors import CheckpointError

        raise CheckpointError(f"{args.checkpoint}: no such checkpoint file")
    paths = write_figures(args.out, model=args.checkpoint, patches=args.patches, n=args.n)
    for p in paths:
        print(p)
    return 0
