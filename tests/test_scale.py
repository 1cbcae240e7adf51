"""aeutils.scale and extract at a microns-per-pixel no level has: the level/factor rule, wrong or missing
scale tags, and resampled patches checked against the true 0.5 um/px pixels of real tissue enlarged 2x
(bicubic, JPEG q90: a smooth 40x pyramid, which a box filter does not invert), by default as well as a
careful per-patch Lanczos resample; the --resample-filter flag and its manifest column."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aeutils import slides as slides_mod
from aeutils.errors import PatchError, SlideError
from aeutils.patches import extract, read_manifest
from aeutils.scale import DEFAULT_FILTER, FILTERS, add_scale_arguments, read_scaled, resolve_scale, scale_kwargs
from aeutils.slides import open_slide
from synthetic import real_tissue, upsampled_pyramid, write_slide

TRUTH_W, TRUTH_H = 724, 543  # 0.5 um/px pixels of real tissue (the bundled prostate, nearly band-limited)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return real_tissue(TRUTH_W, TRUTH_H, prostate=True)


@pytest.fixture(scope="module")
def tcga(tmp_path_factory: pytest.TempPathFactory, truth: np.ndarray) -> Path:
    """A TCGA-like 40x pyramid: 0.25, 1.0, 4.0 um/px (levels 4x apart), level 0 = truth enlarged 2x
    (bicubic), JPEG q90."""
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
        "level": None, "mpp": 0.5, "assume_mpp": 0.25, "resample_filter": None}
    assert scale_kwargs(p.parse_args(["--mpp", "0.5", "--resample-filter", "area"]))["resample_filter"] == "area"
    for bad in (["--mpp", "0.5", "--level", "1"], ["--resample-filter", "box"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


@pytest.mark.parametrize("flt", list(FILTERS))
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


@pytest.mark.parametrize("factor", [2.0, 1.5, 4.0, 1.25, 1.16, 1.9786])
def test_strip_resample_equals_per_patch_crops(factor: float) -> None:
    """resample_patches (one PIL image per strip where the factor allows) gives, bit for bit, each
    patch resample_region gives from its own crop: every filter, dyadic and other factors, the slide's
    edges included (where the filter's support is clipped)."""
    from aeutils.scale import ScaleChoice, resample_patches, resample_region, source_box

    lw, lh = 700, 260
    img = np.random.default_rng(0).integers(0, 256, (lh, lw, 3), dtype=np.uint8)
    img[:, : lw // 2] = np.asarray(Image.fromarray(img[:, : lw // 2]).resize((lw // 2, lh), Image.Resampling.BOX,
                                                                               box=(0, 0, lw // 4, lh // 2)))
    size = 37
    for flt in FILTERS:
        c = ScaleChoice(0, factor, 0.5, "slide", 1.0, (lw, lh), filter=flt)
        w, h = c.output_dimensions
        for oy in (0, 7, h - size):  # top edge, inside, bottom edge
            xs = list(range(0, w - size + 1, size)) + [w - size]  # left and right edges
            bx0, by0, _, by1 = source_box(c, xs[0], oy, size, size)
            bx1 = source_box(c, xs[-1], oy, size, size)[2]
            assert (bx0, bx1) == (0, lw)
            region = img[by0:by1, bx0:bx1]
            got = list(resample_patches(c, region, bx0, by0, [(x, oy) for x in xs], size, size))
            assert len(got) == len(xs)
            for x, patch in zip(xs, got):
                np.testing.assert_array_equal(patch, resample_region(c, region, bx0, by0, x, oy, size, size),
                                              err_msg=f"{flt} x{factor} at {(x, oy)}")


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
    assert {(r["level"], r["resample"], r["mpp"], r["mpp_source"], r["downsample"], r["resample_filter"])
            for r in rows} == {(0, 2.0, 0.5, "slide", 2.0, DEFAULT_FILTER)}
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
    assert len(said) == 1 and f"read level 0 (0.25 um/px) and downsampled x2 ({DEFAULT_FILTER})" in said[0]


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


def naive_lanczos(slide: Path, ox: int, oy: int, size: int, factor: float = 2.0) -> np.ndarray:
    """A careful per-patch resample, written without aeutils: OpenSlide ``read_region`` of the patch's
    level-0 footprint plus 4 output pixels of margin (clipped to the slide, so no black border enters
    the filter), PIL Lanczos onto the patch's exact output-pixel grid."""
    import math

    import openslide

    with openslide.OpenSlide(str(slide)) as osr:
        w0, h0 = osr.dimensions
        m = int(4 * factor)
        x0, y0 = max(0, math.floor(ox * factor) - m), max(0, math.floor(oy * factor) - m)
        x1 = min(w0, math.ceil((ox + size) * factor) + m)
        y1 = min(h0, math.ceil((oy + size) * factor) + m)
        region = osr.read_region((x0, y0), 0, (x1 - x0, y1 - y0)).convert("RGB")
    box = (ox * factor - x0, oy * factor - y0, (ox + size) * factor - x0, (oy + size) * factor - y0)
    return np.asarray(region.resize((size, size), Image.Resampling.LANCZOS, box=box))


def test_default_filter_keeps_detail_area_does_not(tcga: Path, truth: np.ndarray, tmp_path: Path) -> None:
    """Median per-patch PSNR against the true 0.5 um/px pixels of each patch's footprint: extract's default
    is within 0.5 dB of the careful naive Lanczos resample; the box ("area") filter blurs this smooth
    tissue and is not (about 1.2 dB below), so the check can fail."""
    size = 96
    medians: dict[str, float] = {}
    for flt in (None, "area"):
        out = tmp_path / str(flt)
        extract(tcga, out, patch_size=size, mpp=0.5, min_tissue=0.0, resample_filter=flt, workers=1, progress=False,
                log=lambda m: None)
        rows = read_manifest(out)
        assert len(rows) == (TRUTH_W // size) * (TRUTH_H // size)
        assert {r["resample_filter"] for r in rows} == {flt or DEFAULT_FILTER}
        at = [(r["x"] // 2, r["y"] // 2) for r in rows]  # level 0 (0.25 um/px) -> 0.5 um/px pixels
        medians[str(flt)] = float(np.median([psnr(np.asarray(Image.open(out / r["path"])),
                                                  truth[oy:oy + size, ox:ox + size]) for r, (ox, oy) in zip(rows, at)]))
    naive = float(np.median([psnr(naive_lanczos(tcga, ox, oy, size), truth[oy:oy + size, ox:ox + size])
                             for ox, oy in at]))
    assert naive > 40, naive  # the smooth pyramid keeps its detail for a careful resample
    assert medians["None"] >= naive - 0.5, (medians, naive)
    assert medians["area"] < naive - 0.5, (medians, naive)


def test_resample_filter_flag_and_manifest_round_trip(tcga: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--resample-filter reaches the manifest; a rerun with another filter is refused in one line naming
    the flag (nothing touched), the same filter resumes byte-identical, and a manifest written before the
    column existed (resampled rows: area, the only filter then) resumes with --resample-filter area."""
    import csv

    from aeutils.cli import main
    from test_patches import tree_digest

    out = tmp_path / "o"
    base = ["extract", str(tcga), "--out", str(out), "--mpp", "0.5", "--patch-size", "181", "--min-tissue", "0",
            "--workers", "1", "--quiet"]
    assert main([*base, "--resample-filter", "area"]) == 0
    rows = read_manifest(out)
    assert len(rows) == 12 and {r["resample_filter"] for r in rows} == {"area"}
    digest = tree_digest(out)
    capsys.readouterr()

    assert main(base) == 2  # the default (lanczos) would change every patch
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resample-filter area (now lanczos)" in err[0] and "--overwrite" in err[0], err
    assert tree_digest(out) == digest

    assert main([*base, "--resample-filter", "area"]) == 0
    assert "0 new, 12 kept" in capsys.readouterr().out and tree_digest(out) == digest

    # A manifest from before the column: resampled rows without resample_filter.
    manifest = out / "manifest.csv"
    with open(manifest, newline="") as f:
        old = list(csv.DictReader(f))
    with open(manifest, "w", newline="") as f:
        cols = [c for c in old[0] if c != "resample_filter"]
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(old)
    assert {r["resample_filter"] for r in read_manifest(out)} == {None}
    assert main(base) == 2 and "--resample-filter area (now lanczos)" in capsys.readouterr().err
    assert main([*base, "--resample-filter", "area"]) == 0
    assert "0 new, 12 kept" in capsys.readouterr().out
    assert {r["resample_filter"] for r in read_manifest(out)} == {"area"}

    assert main([*base, "--overwrite"]) == 0
    rows = read_manifest(out)
    assert {r["resample_filter"] for r in rows} == {"lanczos"} and tree_digest(out) != digest

    # Unresampled patches record no filter, and the flag does not change them.
    lvl = tmp_path / "lvl"
    assert main(["extract", str(tcga), "--out", str(lvl), "--level", "1", "--patch-size", "64", "--min-tissue", "0",
                 "--workers", "1", "--quiet"]) == 0
    assert {(r["resample"], r["resample_filter"]) for r in read_manifest(lvl)} == {(1.0, None)}
    assert main(["extract", str(tcga), "--out", str(lvl), "--level", "1", "--patch-size", "64", "--min-tissue", "0",
                 "--workers", "1", "--quiet", "--resample-filter", "area"]) == 0
    with pytest.raises(PatchError, match="--resample-filter must be one of lanczos, bicubic, area"):
        extract(tcga, tmp_path / "bad", mpp=0.5, resample_filter="box")
    assert not (tmp_path / "bad").exists()
