"""aeutils.viz: encoding views, grids, the per-patch panel, the explorer widget and the figures CLI.

A small randomly initialised autoencoder (saved with save_checkpoint) stands in for the shipped
model, so nothing here depends on training quality.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from aeutils import viz  # noqa: E402
from aeutils.checkpoint import save_checkpoint  # noqa: E402
from aeutils.encoding import encode_batch  # noqa: E402
from aeutils.model import Autoencoder  # noqa: E402

from tinymodels import tiny_model as _tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model() -> Autoencoder:
    return _tiny_model()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_model: Autoencoder) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", tiny_model)


@pytest.fixture(scope="module")
def patches() -> "torch.Tensor":
    g = torch.Generator().manual_seed(1)
    # smooth-ish random images: a low-resolution field upsampled, so SSIM etc. are meaningful
    low = torch.rand(5, 3, 12, 12, generator=g)
    return torch.nn.functional.interpolate(low, size=(181, 181), mode="bilinear", align_corners=True).clamp(0, 1)


# ------------------------------------------------------------------------------------------- views
def _field(seed: int = 0, shape: tuple[int, int] = (46, 46)) -> np.ndarray:
    return np.random.default_rng(seed).normal(3.0, 5.0, size=shape)


@pytest.mark.parametrize("view", viz.VIEWS)
def test_views_are_images_in_unit_range(view: str) -> None:
    z = _field()
    out = viz.encoding_view(z, view)
    assert out.shape == z.shape and out.dtype == np.float64
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() - out.min() > 0.5  # uses the range, not a flat grey
    # torch 1xHxW input gives the same result as the numpy HxW map
    np.testing.assert_allclose(viz.encoding_view(torch.from_numpy(z).float()[None], view), viz.encoding_view(z.astype(np.float32), view), atol=1e-6)


@pytest.mark.parametrize("view", ["raw", "stretch", "equalize"])
def test_global_views_preserve_order(view: str) -> None:
    z = _field(1)
    out = viz.encoding_view(z, view).ravel()
    order = np.argsort(z.ravel(), kind="stable")
    assert np.all(np.diff(out[order]) >= -1e-12), "a global view must be monotonic in the encoding value"


def test_raw_is_min_max() -> None:
    z = _field(2)
    out = viz.encoding_view(z, "raw")
    np.testing.assert_allclose(out, (z - z.min()) / (z.max() - z.min()))
    assert out.min() == 0.0 and out.max() == 1.0


@pytest.mark.parametrize("low,high", [(2, 98), (10, 90), (0.5, 60)])
def test_stretch_clips_at_percentiles(low: float, high: float) -> None:
    z = _field(3, (100, 100))
    out = viz.encoding_view(z, "stretch", low, high)
    assert abs((out == 0).mean() * 100 - low) < 1.0
    assert abs((out == 1).mean() * 100 - (100 - high)) < 1.0
    inside = (z > np.percentile(z, low)) & (z < np.percentile(z, high))
    assert np.all((out[inside] > 0) & (out[inside] < 1))


def test_stretch_is_wider_than_raw_for_outliers() -> None:
    z = _field(4)
    z[0, 0] = 1000.0  # one outlier squashes the min-max view into a sliver
    raw, stretched = viz.encoding_view(z, "raw"), viz.encoding_view(z, "stretch", 2, 98)
    assert np.std(raw) < 0.05 < np.std(stretched)


def test_equalize_flattens_the_histogram() -> None:
    z = np.random.default_rng(5).exponential(size=(64, 64)) ** 2  # skewed: min-max is mostly dark
    raw, eq = viz.encoding_view(z, "raw"), viz.encoding_view(z, "equalize")
    hist_raw = np.histogram(raw, bins=10, range=(0, 1))[0]
    hist_eq = np.histogram(eq, bins=10, range=(0, 1))[0]
    assert hist_eq.std() < hist_raw.std() / 3
    assert abs(eq.mean() - 0.5) < 0.1 and abs(raw.mean() - 0.5) > 0.4


def test_clahe_raises_local_contrast() -> None:
    z = _field(6, (64, 64)) * 0.05
    z[:, 32:] += 20.0  # two flat halves at very different levels: min-max leaves each half nearly flat
    raw, clahe = viz.encoding_view(z, "raw"), viz.encoding_view(z, "clahe")
    assert clahe[:, :32].std() > 2 * raw[:, :32].std()


@pytest.mark.parametrize("view", viz.VIEWS)
def test_constant_map_is_black(view: str) -> None:
    assert not viz.encoding_view(np.full((46, 46), 7.5), view).any()


def test_bad_view_and_percentiles_raise() -> None:
    z = _field()
    with pytest.raises(ValueError, match="unknown view"):
        viz.encoding_view(z, "log")
    with pytest.raises(ValueError, match="percentiles"):
        viz.encoding_view(z, "stretch", 60, 40)
    with pytest.raises(ValueError, match="HxW"):
        viz.encoding_view(np.zeros((2, 46, 46)))


def test_encoding_views_batch() -> None:
    z = torch.randn(3, 1, 46, 46) * 4
    out = viz.encoding_views(z, "stretch", 5, 95)
    assert out.shape == (3, 1, 46, 46) and out.dtype == torch.float32
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    np.testing.assert_allclose(out[1, 0].numpy(), viz.encoding_view(z[1, 0], "stretch", 5, 95), atol=1e-6)


# ------------------------------------------------------------------------------------------- grids
def test_grid_shapes() -> None:
    g = viz.batch_grid(torch.rand(16, 3, 181, 181))
    assert tuple(g.shape) == (3, 4 * 181 + 5 * 2, 4 * 181 + 5 * 2)
    e = viz.batch_grid(torch.rand(16, 1, 46, 46))
    assert tuple(e.shape) == (3, 4 * 46 + 5 * 2, 4 * 46 + 5 * 2)
    assert tuple(viz.batch_grid(torch.rand(6, 3, 181, 181), nrow=3).shape) == (3, 2 * 181 + 6, 3 * 181 + 8)
    with pytest.raises(ValueError, match="NxCxHxW"):
        viz.batch_grid(torch.rand(4, 2, 10, 10))


def test_scale_descriptions() -> None:
    assert viz.describe_scale((3, 181, 181), 0.499) == "3x181x181 px, 0.499 \u00b5m/px (90 \u00b5m wide)"
    assert viz.describe_scale((1, 46, 46), 0.499, viz.ENCODING_STRIDE) == "1x46x46 px, 1.996 \u00b5m/px (92 \u00b5m wide)"
    assert "unknown" in viz.describe_scale((1, 46, 46), None)
    # the docstrings quote what the code prints
    assert viz.describe_scale.__doc__.startswith(repr(viz.describe_scale((3, 181, 181), 0.499)))
    from aeutils.viz.views import two_line_scale

    assert two_line_scale.__doc__.startswith(repr(viz.describe_scale((3, 181, 181), 0.499)))


def test_grid_figures_title_true_shapes(tiny_model: Autoencoder, patches: "torch.Tensor") -> None:
    e = encode_batch(tiny_model, patches)
    fig = viz.encoding_grid_figure(e.latent, "equalize")
    title = fig._suptitle.get_text()
    assert "5 x 1x46x46 px" in title and "1.996 \u00b5m/px" in title and "equalisation" in title
    fig = viz.input_grid_figure(e.inputs)
    assert "5 x 3x181x181 px, 0.499 \u00b5m/px" in fig._suptitle.get_text()
    png = viz.figure_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------- panel
def test_panel_reports_metrics(tiny_model: Autoencoder, patches: "torch.Tensor") -> None:
    from aeutils.metrics import psnr

    e = encode_batch(tiny_model, patches[:1])
    fig = viz.patch_panel(e.inputs[0], e.latent[0], e.outputs[0], view="clahe")
    text = fig._suptitle.get_text()
    assert f"PSNR {float(psnr(e.outputs, e.inputs)[0]):.2f} dB" in text and "SSIM" in text
    assert len(fig.axes) == 5  # four panels + the error colour bar
    assert "1x46x46 px\n1.996 \u00b5m/px" in fig.axes[1].get_title()
    # a perfect reconstruction: zero error map, infinite PSNR, SSIM 1
    perfect = viz.patch_panel(patches[0], e.latent[0], patches[0])
    assert "PSNR inf dB, SSIM 1.000" in perfect._suptitle.get_text()
    assert not perfect.axes[3].images[0].get_array().any()
    np.testing.assert_allclose(viz.error_map(patches[0], 1 - patches[0]), (1 - 2 * patches[0]).abs().mean(0).numpy(), atol=1e-6)


# ------------------------------------------------------------------------------------------- explorer
@pytest.fixture()
def explorer(tiny_model: Autoencoder, patches: "torch.Tensor") -> "viz.Explorer":
    return viz.Explorer(patches, tiny_model, mpp=0.5, size_px=(500, 160))  # small: 100 renders stay quick


def test_explorer_controls_redraw(explorer: "viz.Explorer") -> None:
    import ipywidgets as w

    ex = explorer
    assert isinstance(ex.widget, w.VBox) and isinstance(ex.image, w.Image)
    assert (ex.index.min, ex.index.max, ex.index.value) == (1, 5, 1) and ex.view.value == "raw"
    seen = {bytes(ex.image.value)}

    def changed() -> bytes:
        png = bytes(ex.image.value)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert png not in seen, "the panel image did not change"
        seen.add(png)
        return png

    ex.index.value = 4  # the slider, the title and the status line count alike, from 1
    changed()
    assert ex.position == 3 and "patch 4 of 5" in ex.status.value
    assert ex.panel.figure._suptitle.get_text().startswith("patch 4/5: ")
    assert ex.percentiles.disabled
    ex.view.value = "stretch"
    assert not ex.percentiles.disabled
    changed()
    ex.percentiles.value = (20.0, 80.0)
    changed()
    ex.view.value = "clahe"
    changed()
    ex.tap.value = "stage1"
    assert ex.channel.max == 7 and not ex.channel.disabled
    changed()
    ex.channel.value = 5
    changed()
    assert "stage1 channel 5" in ex.panel.axes[1].get_title() and "8x91x91 px\n1 \u00b5m/px" in ex.panel.axes[1].get_title()
    ex.tap.value = "stage3"  # 4 channels: the channel is clamped
    assert ex.channel.max == 3 and ex.channel.value == 3
    ex.tap.value = "latent"
    assert ex.channel.disabled and ex.channel.value == 0


def test_explorer_redraw_matches_panel(explorer: "viz.Explorer") -> None:
    ex = explorer
    ex.index.value = 3  # patch 3 of 5: the batch's third item
    e = ex.encoded
    assert f"PSNR {float(e.psnr[2]):.2f} dB" in ex.panel.figure._suptitle.get_text()
    view_map, _ = ex.current_map()
    np.testing.assert_allclose(view_map, viz.encoding_view(e.latent[2], "raw"))


def test_explorer_driven_like_a_reader_in_notebook_04(tiny_model: Autoencoder, patches: "torch.Tensor") -> None:
    """What notebook 04's reader does (was its assert cell): the last patch, the stretch view with other
    percentiles, a stage1 channel; every step redraws, and slider, title and status name the same patch."""
    ex = viz.Explorer(encode_batch(tiny_model, patches, features=True), mpp=0.499, size_px=(500, 160))
    images = [bytes(ex.image.value)]
    ex.index.value = ex.index.max
    images.append(bytes(ex.image.value))
    n = patches.shape[0]
    assert ex.index.value == n and ex.position == n - 1
    assert ex.panel.figure._suptitle.get_text().startswith(f"patch {n}/{n}: ") and f"patch {n} of {n}" in ex.status.value
    ex.view.value = "stretch"
    ex.percentiles.value = (10.0, 90.0)
    images.append(bytes(ex.image.value))
    ex.tap.value = "stage1"
    ex.channel.value = 3
    images.append(bytes(ex.image.value))
    assert len(set(images)) == len(images), "a control did not redraw the panel"
    assert "stage1 channel 3" in ex.panel.axes[1].get_title()
    ex.tap.value, ex.index.value = "latent", 1
    assert ex.panel.figure._suptitle.get_text().startswith(f"patch 1/{n}: ")
    assert "higher is better" in ex.panel.figure._suptitle.get_text()  # which direction PSNR/SSIM are good
    assert "lower is better" in ex.panel.axes[3].get_title()  # and the error map


def test_explorer_no_figure_leak(explorer: "viz.Explorer") -> None:
    import gc

    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    ex = explorer
    gc.collect()
    figs_before = len(plt.get_fignums())
    live_before = sum(issubclass(type(o), Figure) for o in gc.get_objects())
    artists_before = sum(len(ax.get_children()) for ax in ex.panel.figure.axes)
    renders = ex.renders
    for i in range(100):
        ex.index.value = (i * 3 + 1) % 5 + 1
        if i % 10 == 0:
            ex.view.value = viz.VIEWS[(i // 10) % len(viz.VIEWS)]
    gc.collect()
    assert ex.renders - renders >= 100
    assert len(plt.get_fignums()) == figs_before
    assert sum(issubclass(type(o), Figure) for o in gc.get_objects()) == live_before
    assert sum(len(ax.get_children()) for ax in ex.panel.figure.axes) == artists_before


def test_explorer_from_checkpoint_and_folder(tiny_ckpt: Path, patches: "torch.Tensor", tmp_path: Path) -> None:
    from PIL import Image

    for i, p in enumerate(patches[:3]):
        Image.fromarray((p.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / f"p{i}.png")
    ex = viz.Explorer(tmp_path, str(tiny_ckpt))
    assert ex.index.max == 3 and ex.mpp is None
    assert "pixel size unknown" in ex.panel.axes[0].get_title()
    torch.testing.assert_close(ex.encoded.inputs, patches[:3], atol=1 / 255, rtol=0)


def test_explorer_on_an_extraction_folder(tiny_model: Autoencoder, patches: "torch.Tensor", tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "normal").mkdir()
    rows = ["path,slide,level,x,y,size,mpp,tissue_fraction,tumour_fraction,label"]
    for i, p in enumerate(patches[:2]):
        name = f"normal/s_{i * 181}_0.png"
        Image.fromarray((p.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / name)
        rows.append(f"{name},s,1,{i * 362},0,181,0.998,1.0,0.0,0")  # label 0 = normal (patches.LABEL_DIRS)
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    ex = viz.Explorer(tmp_path, tiny_model)
    assert ex.index.max == 2 and ex.mpp == pytest.approx(0.998)  # level 1: the manifest's pixel size
    assert "0.998 \u00b5m/px" in ex.panel.axes[0].get_title() and "3.992 \u00b5m/px" in ex.panel.axes[1].get_title()


def test_explorer_defaults_to_shipped_model_and_sample(tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSCOPY_PRETRAINED", str(tiny_ckpt))
    ex = viz.Explorer(n=2)
    assert ex.index.max == 2 and ex.mpp == pytest.approx(0.499)
    assert tuple(ex.encoded.inputs.shape) == (2, 3, 181, 181)
    assert "0.499 \u00b5m/px" in ex.panel.axes[0].get_title()


def test_explorer_rejects_bad_tensor(tiny_model: Autoencoder) -> None:
    from aeutils.errors import PatchError

    with pytest.raises(PatchError, match="Nx3xHxW"):
        viz.Explorer(torch.rand(2, 1, 181, 181), tiny_model)


# ------------------------------------------------------------------------------------------- figures CLI
def test_figures_cli_writes_six_pngs(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from aeutils.cli import main

    monkeypatch.chdir(tmp_path)  # a bare command writes under work/figures, never over the tracked readme_images/
    assert main(["figures", "--checkpoint", str(tiny_ckpt), "--n", "4"]) == 0
    out = tmp_path / "work" / "figures"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in out.iterdir()) == sorted(viz.FIGURE_FILES)  # no temp files left behind
    grid = viz.grid_figure_size((2 * 181 + 3 * 2, 2 * 181 + 3 * 2))
    for name in viz.FIGURE_FILES:
        with Image.open(out / name) as im:
            assert im.format == "PNG"
            assert im.size == (viz.SLIDES_FIGURE_PX if name == "sample_slides.png" else grid), name
    assert len(capsys.readouterr().out.splitlines()) == 6
    # deterministic: the same command, with --out, gives the same bytes there
    again = tmp_path / "readme_images"
    assert main(["figures", "--out", str(again), "--checkpoint", str(tiny_ckpt), "--n", "4"]) == 0
    assert capsys.readouterr().out.split() == [str(again / n) for n in viz.FIGURE_FILES]
    for name in viz.FIGURE_FILES:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    # the encodings differ between views, and the input and output grids differ
    data = {n: (out / n).read_bytes() for n in viz.FIGURE_FILES}
    assert len(set(data.values())) == 6


def test_figures_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aeutils.cli import main

    assert main(["figures", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert main(["figures", "--out", str(tmp_path), "--n", "0"]) == 2
    assert "--n" in capsys.readouterr().err


def test_manifest_mpp_reads_the_manifest_without_the_extraction_package(tmp_path: Path) -> None:
    """The figures' patch source reads manifest.csv through aeutils.manifest: one mpp, None when mixed
    or absent, and aeutils.patches (the extraction package) is not imported for it."""
    from aeutils.manifest import MANIFEST_COLUMNS, MANIFEST_NAME, write_manifest

    def row(i: int, mpp: str) -> dict[str, str]:
        r = dict.fromkeys(MANIFEST_COLUMNS, "")
        r.update(path=f"p{i}.png", slide="s", level="0", x=str(i), y="0", size="181", mpp=mpp, tissue_fraction="1")
        return r

    (tmp_path / "one").mkdir()
    (tmp_path / "mixed").mkdir()
    (tmp_path / "none").mkdir()
    write_manifest(tmp_path / "one" / MANIFEST_NAME, [row(0, "0.499"), row(1, "0.499")])
    write_manifest(tmp_path / "mixed" / MANIFEST_NAME, [row(0, "0.499"), row(1, "0.25")])
    code = (
        "import sys; from pathlib import Path; from aeutils.viz.figures import manifest_mpp; "
        f"d = Path({str(tmp_path)!r}); "
        "print(manifest_mpp(d / 'one'), manifest_mpp(d / 'mixed'), manifest_mpp(d / 'none'), 'aeutils.patches' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out == ["0.499", "None", "None", "False"]


def test_import_aeutils_does_not_import_viz() -> None:
    code = "import sys, aeutils; assert 'aeutils.viz' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_explorer_reuses_an_encoded_batch(tiny_model: Autoencoder, patches: "torch.Tensor") -> None:
    e = encode_batch(tiny_model, patches[:2])  # no features: only the latent is offered
    ex = viz.Explorer(e, mpp=0.499)
    assert ex.encoded is e and list(ex.tap.options) == ["latent"]
    before = bytes(ex.image.value)
    ex.index.value = 2
    assert bytes(ex.image.value) != before


