"""aeutils.slides: OpenSlide access, levels, mpp, thumbnails, region reads, and its errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest

from aeutils.errors import SlideError
from aeutils.sample import SAMPLE_DIMENSIONS, SAMPLE_MPP
from aeutils.slides import open_slide
from synthetic import write_slide


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slide(tmp_path_factory.mktemp("slides") / "syn.tiff", levels=3, mpp=0.5)


def test_sample_slide_properties(sample_slide_path: Path) -> None:
    with open_slide(sample_slide_path) as s:
        assert s.name == "CMU-1-Small-Region"
        assert s.dimensions == SAMPLE_DIMENSIONS
        assert s.level_count == 1 and s.level_downsamples == (1.0,)
        assert s.mpp == pytest.approx(SAMPLE_MPP)
        thumb = s.thumbnail(256)
        assert thumb.dtype == np.uint8 and thumb.shape[2] == 3 and max(thumb.shape[:2]) == 256


def test_read_region_matches_openslide(sample_slide_path: Path) -> None:
    osr = openslide.OpenSlide(str(sample_slide_path))
    with open_slide(sample_slide_path) as s:
        for x, y, size in [(0, 0, 181), (905, 1267, 181), (2000, 2800, 300)]:  # the last runs off the slide
            ours = s.read_region(x, y, 0, size)
            ref = np.asarray(osr.read_region((x, y), 0, (size, size)).convert("RGB"))
            assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
            np.testing.assert_array_equal(ours, ref)
        rect = s.read_region(10, 20, 0, (50, 30))
        assert rect.shape == (30, 50, 3)


def test_synthetic_pyramid(syn: Path) -> None:
    with open_slide(syn) as s:
        assert s.dimensions == (1024, 768)
        assert s.level_count == 3
        assert s.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert s.level_downsamples == (1.0, 2.0, 4.0)
        assert s.mpp == pytest.approx(0.5)
        assert s.level_mpp(2) == pytest.approx(2.0)
        assert s.level_for_mpp(1.0) == 1
        assert s.level_for_mpp(0.55) == 0
        with pytest.raises(SlideError, match="no pyramid level near 0.7"):
            s.level_for_mpp(0.7)
        osr = openslide.OpenSlide(str(syn))
        np.testing.assert_array_equal(
            s.read_region(64, 96, 1, 50), np.asarray(osr.read_region((64, 96), 1, (50, 50)).convert("RGB"))
        )


def test_slide_without_mpp(tmp_path: Path) -> None:
    p = write_slide(tmp_path / "nompp.tiff", 256, 256, [(0, 0, 128, 128)], levels=1, mpp=None)
    with open_slide(p) as s:
        assert s.mpp is None and s.level_mpp(0) is None
        with pytest.raises(SlideError, match="does not record its microns per pixel"):
            s.level_for_mpp(0.5)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match=r"nope\.svs: no such file"):
        open_slide(tmp_path / "nope.svs")


def test_text_file_named_svs(tmp_path: Path) -> None:
    p = tmp_path / "notes.svs"
    p.write_text("this is not a slide\n")
    with pytest.raises(SlideError, match=r"notes\.svs: not a slide"):
        open_slide(p)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.svs"
    p.write_bytes(b"")
    with pytest.raises(SlideError, match=r"empty\.svs: empty file"):
        open_slide(p)


@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_truncated_slide(tmp_path: Path, sample_slide_path: Path, fraction: float) -> None:
    data = sample_slide_path.read_bytes()
    p = tmp_path / "cut.svs"
    p.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(SlideError, match=r"cut\.svs: .*(truncated|corrupt)"):
        with open_slide(p) as s:  # may open; then reading the pixels must fail cleanly
            s.thumbnail(512)
            s.read_region(0, 0, 0, s.dimensions)


def test_level_out_of_range(syn: Path) -> None:
    with open_slide(syn) as s:
        with pytest.raises(SlideError, match=r"syn\.tiff: level 3 out of range \(the slide has levels 0\.\.2\)"):
            s.read_region(0, 0, 3, 10)
        with pytest.raises(SlideError, match="level -1 out of range"):
            s.check_level(-1)


def test_closed_slide(syn: Path) -> None:
    s = open_slide(syn)
    s.close()
    s.close()  # idempotent
    with pytest.raises(SlideError, match="closed"):
        s.read_region(0, 0, 0, 8)
