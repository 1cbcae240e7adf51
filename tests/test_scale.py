"""aeutils.scale and extract at a microns-per-pixel no level has: the level/factor rule, wrong or missing
scale tags, and resampled patches checked against the true 0.5 um/px pixels of an upsampled real tissue."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aeutils import slides as slides_mod
from aeutils.errors import PatchError, SlideError
from aeutils.patches import extract, read_manifest
from aeutils.scale import add_scale_arguments, read_scaled, resolve_scale, scale_kwargs
from aeutils.slides import open_slide
from synthetic import real_tissue, upsampled_pyramid, write_slide

TRUTH_W, TRUTH_H = 724, 543  # 0.5 um/px pixels of real tissue (the sample slide at 0.499)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return real_tissue(TRUTH_W, TRUTH_H)


@pytest.fixture(scope="module")
def tcga(tmp_path_factory: pytest.TempPathFactory, truth: np.ndarray) -> Path:
    """A TCGA-like 40x pyramid: 0.25, 1.0, 4.0 um/px (levels 4x apart), level 0 = truth upsampled 2x."""
    return upsampled_pyramid(tmp_path_factory.mktemp("scale") / "tcga.tiff", truth, up=2, mpp=0.25, step=4)


@pytest.mark.parametrize("mpp,level,factor,out_mpp", [
    (0.5, 0, 2.0, 0.5),      # no level near 0.5: level 0 downsampled x2 (not level 1 upsampled)
    (0.29, 0, 1.16, 0.29),   # 16 % from 0.25: resampled, not snapped silently
    (0.26, 0, 1.0, 0.25),    # within 10 %: level 0 as is, reported as the choice
    (0.9, 0, 3.6, 0.9),      # 1.0 is 11 % away and coarser: never used; level 0 x3.6
    (1.05, 1, 1.0, 1.0),     # within 10 % of level 1
    (2.0, 1, 2.0, 2.0),      # between levels 1 and 2: the finer one (1), downsampled
])
def test_level_and_factor(tcga: Path, mpp: float, level: int, factor: float, out_mpp: float) -> None:
    with open_slide(tcga) as s:
        c = resolve_scale(s, mpp=mpp)
    assert (c.level, c.mpp_source) == (level, "slide")
    assert c.factor == pytest.approx(factor, rel=1e-2) and c.mpp == pytest.approx(out_mpp, rel=1e-2)
    assert c.level_downsample * 0.25 <= mpp * 1.1  # the level read is never coarser than the target
    line = c.describe()
    assert "\n" not in line and f"level {level}" in line
    assert ("downsampled x" in line) == (factor != 1.0)
    if mpp == 0.26:
        assert "for --mpp 0.26 (within 3.8 %)" in line


def test_scale_errors(tcga: Path, tmp_path: Path) -> None:
    nompp = write_slide(tmp_path / "nompp.tiff", 256, 256, [(0, 0, 256, 256)], levels=1, mpp=None)
    wrong = write_slide(tmp_path / "wrong.tiff", 256, 256, [(0, 0, 256, 256)], levels=1, mpp=896.0)
    with open_slide(nompp) as s:
        with pytest.raises(SlideError, match=r"nompp\.tiff: --mpp 0\.5 needs the slide's scale but the file records "
                                             r"no microns per pixel; .*--assume-mpp X"):
            resolve_scale(s, mpp=0.5)
        c = resolve_scale(s)  # no --mpp: level 0 as today, no false mpp
        assert (c.level, c.factor, c.mpp, c.mpp_source) == (0, 1.0, None, None)
        assert "scale unknown" in c.describe()
    with open_slide(wrong) as s:
        with pytest.raises(SlideError, match=r"wrong\.tiff: .*claims 896 um/px, outside the plausible 0\.05-20 um/px"):
            resolve_scale(s, mpp=0.5)
        c = resolve_scale(s, mpp=0.5, assume_mpp=0.25)
        assert (c.level, c.factor, c.mpp, c.mpp_source) == (0, 2.0, 0.5, "assumed")
        assert resolve_scale(s).mpp is None  # the implausible tag never reaches a manifest
    with open_slide(tcga) as s:
        with pytest.raises(SlideError, match=r"tcga\.tiff: --mpp 0\.1 is finer than level 0"):
            resolve_scale(s, mpp=0.1)
        with pytest.raises(PatchError, match="either --level or --mpp"):
            resolve_scale(s, level=1, mpp=1.0)
        with pytest.raises(PatchError, match="--assume-mpp 50 is outside"):
            resolve_scale(s, mpp=1.0, assume_mpp=50)
        with pytest.raises(SlideError, match="level 7 out of range"):
            resolve_scale(s, level=7)


def test_cli_helper_parses_the_shared_options() -> None:
    p = argparse.ArgumentParser()
    add_scale_arguments(p)
    assert scale_kwargs(p.parse_args(["--mpp", "0.5", "--assume-mpp", "0.25"])) == {
        "level": None, "mpp": 0.5, "assume_mpp": 0.25}
    with pytest.raises(SystemExit):
        p.parse_args(["--mpp", "0.5", "--level", "1"])


@pytest.mark.parametrize("flt", ["area", "lanczos"])
def test_read_scaled_region_vs_truth(tcga: Path, truth: np.ndarray, flt: str) -> None:
    with open_slide(tcga) as s:
        c = resolve_scale(s, mpp=0.5, filter=flt)
        assert c.output_dimensions == (TRUTH_W, TRUTH_H)
        got = read_scaled(s, c, 100, 50, 300, 200)
        assert got.shape == (200, 300, 3)
        assert psnr(got, truth[50:250, 100:400]) >= 30
        # What the coarser level would give (1.0 um/px upsampled x2) is clearly worse: the test can fail.
        c1 = resolve_scale(s, level=1)
        coarse = np.asarray(Image.fromarray(read_scaled(s, c1, 50, 25, 150, 100)).resize((300, 200), Image.Resampling.BICUBIC))
        assert psnr(coarse, truth[50:250, 100:400]) < psnr(got, truth[50:250, 100:400]) - 3


def test_extract_at_05_from_40x_pyramid(tcga: Path, truth: np.ndarray, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    levels_read: list[int] = []
    real = slides_mod.read_rgb

    def spy(osr, x, y, level, w, h):  # type: ignore[no-untyped-def]
        levels_read.append(level)
        return real(osr, x, y, level, w, h)

    monkeypatch.setattr(slides_mod, "read_rgb", spy)
    out = tmp_path / "o"
    lines: list[str] = []
    extract(tcga, out, patch_size=96, mpp=0.5, min_tissue=0.0, workers=1, progress=False, log=lines.append)
    rows = read_manifest(out)
    assert len(rows) == (TRUTH_W // 96) * (TRUTH_H // 96)
    assert set(levels_read) == {0}  # the coarser level 1 (1.0 um/px) is never read
    assert {(r["level"], r["resample"], r["mpp"], r["mpp_source"], r["downsample"]) for r in rows} == {
        (0, 2.0, 0.5, "slide", 2.0)}
    scores = []
    for r in rows:
        ox, oy = r["x"] // 2, r["y"] // 2  # level-0 (0.25 um/px) -> 0.5 um/px pixels
        got = np.asarray(Image.open(out / r["path"]))
        assert got.shape == (96, 96, 3)
        scores.append(psnr(got, truth[oy:oy + 96, ox:ox + 96]))
    assert np.mean(scores) >= 30, scores
    # Each patch is what a read of its own gives (strip reads do not change pixels).
    with open_slide(tcga) as s:
        c = resolve_scale(s, mpp=0.5)
        for r in rows[:: max(1, len(rows) // 6)]:
            alone = read_scaled(s, c, r["x"] // 2, r["y"] // 2, 96, 96)
            np.testing.assert_array_equal(np.asarray(Image.open(out / r["path"])), alone)
    # Said once for the slide: the level read and the factor.
    said = [line for line in lines if "tcga" in line]
    assert len(said) == 1 and "read level 0 (0.25 um/px) and downsampled x2" in said[0]


def test_unknown_scale_warns_once_and_writes_no_mpp(tmp_path: Path) -> None:
    wrong = write_slide(tmp_path / "wrong.tiff", 512, 512, [(0, 0, 512, 512)], levels=2, mpp=896.0)
    lines: list[str] = []
    extract(wrong, tmp_path / "o", patch_size=128, workers=1, progress=False, log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "claims 896 um/px (implausible)" in warnings[0]
    rows = read_manifest(tmp_path / "o")
    assert rows and all(r["mpp"] is None and r["mpp_source"] is None for r in rows)
    extract(wrong, tmp_path / "a", patch_size=128, mpp=1.0, assume_mpp=0.5, workers=1, progress=False, log=lines.append)
    rows = read_manifest(tmp_path / "a")
    assert {(r["level"], r["mpp"], r["mpp_source"]) for r in rows} == {(1, 1.0, "assumed")}
