"""Figures: batch grids, the per-patch panel (:class:`PatchPanel`), the sample-slides figure, and
:func:`write_figures` with the ``figures`` command (the README images).

All figures are ``matplotlib.figure.Figure`` objects that are not registered with pyplot, so nothing
leaks: a notebook displays them when they are a cell's value, the CLI saves them. Titles that quote
PSNR (dB) or SSIM say "higher is better"; the error map's colour bar is "lower is better".
"""
from __future__ import annotations

import argparse
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from aeutils.errors import AeutilsError
from aeutils.io import atomic_write_bytes
from aeutils.sample import SAMPLE_MPP
from aeutils.viz.views import ENCODING_STRIDE, VIEW_LABELS, two_line_scale, describe_scale, encoding_view, encoding_views

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from aeutils.model import Autoencoder

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
_PNG_META = {"Software": None}  # no matplotlib version in the file: same bytes on every install


def manifest_mpp(source: Path) -> float | None:
    """The one ``mpp`` of an extraction folder's manifest.csv (None if absent, unknown or mixed)."""
    from aeutils.manifest import MANIFEST_NAME, read_manifest  # not aeutils.patches: no extraction package

    if not (source / MANIFEST_NAME).is_file():
        return None
    values = {row["mpp"] for row in read_manifest(source)}
    return values.pop() if len(values) == 1 else None


def load_patch_source(
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
            mpp = manifest_mpp(patches)
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
        self.axes[3].set_title(f"|error| (lower is better), mean over RGB\nper pixel, max {err.max():.2f}\n(colour scale 0-{self.error_max:g})", fontsize=9)
        self._suptitle.set_text(f"{title}PSNR {psnr_db:.2f} dB, SSIM {ssim_value:.3f} (higher is better)")
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
        input_title=f"input\n{two_line_scale(describe_scale(x.shape, mpp))}",
        encoding_title=f"encoding, {view}\n{two_line_scale(describe_scale(z.shape, mpp, ENCODING_STRIDE))}",
    )


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
    from aeutils.checkpoint import load_model
    from aeutils.encoding import encode_batch

    ae = load_model(model)
    x, mpp = load_patch_source(patches, n, 181, mpp)
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
            f"median PSNR {float(e.psnr.median()):.1f} dB, median SSIM {float(e.ssim.median()):.3f} (higher is better)",
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
    parser.add_argument(
        "--out", type=Path, default=Path("work/figures"),
        help="output folder (default: work/figures; `make figures` passes --out readme_images to refresh the README's)",
    )
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
