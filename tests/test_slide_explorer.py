"""The slide explorer: sliders and clicks move the patch, the panel shows that patch through the model,
the view toggles without re-reading, and the thumbnails mark the location (callbacks driven by .value)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aeutils.errors import PatchError
from aeutils.slide_explorer import SlideExplorer
from aeutils.slidemap import encode_slide
from aeutils.slides import open_slide
from synthetic import write_slide
from tinymodels import small_model


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("explorer")
    slide = write_slide(d / "syn.tiff", 1200, 900, ((100, 100, 600, 500), (700, 450, 1100, 850)), levels=3)
    res = encode_slide(slide, d / "maps", model=small_model(), core=512, precision="fp32", progress=False)
    return slide, res.encoding


def test_sliders_and_clicks_move_the_patch(syn: tuple[Path, Path]) -> None:
    slide, encoding = syn
    model = small_model()
    ex = SlideExplorer(slide, model, encoding=encoding, mpp=0.5, thumb_side=300)
    assert ex.renders == 1 and ex.encoded.inputs.shape == (1, 3, 181, 181)
    assert ex.mpp == pytest.approx(0.5) and (ex.width, ex.height) == (1200, 900)
    first, thumb0, map0 = ex.image.value, ex.thumb.value, ex.map.value
    # the default location is on tissue: the patch is pink, not glass
    assert ex.encoded.inputs[0, 1].mean() < 0.75

    ex.x.value = 850
    ex.y.value = 650
    assert ex.renders == 3 and ex.image.value != first and ex.thumb.value != thumb0 and ex.map.value != map0
    with open_slide(slide) as s:
        want = s.read_region(850 - 90, 650 - 90, 0, 181)
    assert np.array_equal(ex.read_patch(), want)
    x = torch.from_numpy(want.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        assert torch.allclose(ex.encoded.latent, model.encode(x), atol=1e-5)
        assert torch.allclose(ex.encoded.outputs, model(x), atol=1e-5)

    # a click on the slide thumbnail (300 px for 1200 px: 4 input px per thumbnail px), one redraw
    ex.click(50, 40)
    assert (ex.x.value, ex.y.value) == (202, 162) and ex.renders == 4
    # a click on the encoding map thumbnail lands at the same place of the slide
    ex.click(50, 40, on="map")
    assert abs(ex.x.value - 202) <= 4 and abs(ex.y.value - 162) <= 4 and ex.renders == 5
    # clicks near the edge clip to a whole patch
    ex.click(299, 224)
    assert (ex.x.value, ex.y.value) == (1200 - 91, 900 - 91)

    # the view changes the panel, not the patch
    inputs = ex.encoded.inputs.clone()
    before = ex.image.value
    ex.view.value = "equalize"
    assert ex.image.value != before and torch.equal(ex.encoded.inputs, inputs) and ex.renders == 7
    with pytest.raises(PatchError, match="cannot click"):
        ex.click(1, 1, on="elsewhere")
    ex.close()


def test_explorer_without_a_map_and_bad_sizes(syn: tuple[Path, Path]) -> None:
    slide, _ = syn
    ex = SlideExplorer(slide, small_model(), level=1, x=100, y=100)
    assert (ex.width, ex.height) == (600, 450) and ex.mpp == pytest.approx(1.0)
    assert (ex.x.value, ex.y.value) == (100, 100) and ex.map.value == b""
    with pytest.raises(PatchError, match="cannot click"):
        ex.click(1, 1, on="map")
    ex.close()
    with pytest.raises(ValueError, match="4k\\+1|nearest valid"):
        SlideExplorer(slide, small_model(), size=180)
    with pytest.raises(PatchError, match="larger than the slide"):
        SlideExplorer(slide, small_model(), level=2, size=257)


def test_the_explorer_says_whether_clicks_work(syn: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """With ipyevents (the notebooks extra) clicks are wired and offered; without it the text says sliders only."""
    import builtins
    import sys

    slide, encoding = syn
    pytest.importorskip("ipyevents")
    ex = SlideExplorer(slide, small_model(), encoding=encoding, mpp=0.5, thumb_side=200)
    assert len(ex._events) == 2 and "(click or use the sliders)" in ex.widget.children[1].children[0].children[0].value
    ex.close()
    real_import = builtins.__import__

    def no_ipyevents(name: str, *args: object, **kwargs: object) -> object:
        if name == "ipyevents":
            raise ImportError("no ipyevents")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "ipyevents")
    monkeypatch.setattr(builtins, "__import__", no_ipyevents)
    ex = SlideExplorer(slide, small_model(), mpp=0.5, thumb_side=200)
    assert ex._events == [] and "clicks need the ipyevents package" in ex.widget.children[1].children[0].children[0].value
    ex.close()
