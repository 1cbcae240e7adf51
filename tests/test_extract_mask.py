"""``extract(mask=...)`` / ``--mask`` / ``--mask-dir``: your own tissue mask replaces the automatic one.

Synthetic slides (tests/synthetic.py) whose tissue is known exactly; the masks below deliberately
select glass the automatic detection would reject, so a cell kept proves the mask was used.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aeutils.errors import PatchError, SlideError
from aeutils.patches import extract, plan_slide, read_manifest
from aeutils.tissue import user_mask
from synthetic import expected_cells, write_slide
from test_patches import tree_digest

ROOT = Path(__file__).resolve().parent.parent
W, H = 1024, 768
TISSUE = ((128, 128, 512, 384), (640, 384, 896, 640))
MASKED = (0, 512, 256, 768)  # glass on the slide: only a mask can select it


def mask_of(rects, scale: float = 1 / 8, shape: tuple[int, int] | None = None) -> np.ndarray:
    """H x W bool mask covering the whole slide at ``scale`` mask px per level-0 px, True inside ``rects``."""
    mh, mw = shape or (round(H * scale), round(W * scale))
    m = np.zeros((mh, mw), dtype=bool)
    for x0, y0, x1, y1 in rects:
        m[round(y0 * mh / H):round(y1 * mh / H), round(x0 * mw / W):round(x1 * mw / W)] = True
    return m


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slide(tmp_path_factory.mktemp("mask") / "syn.tiff", W, H, TISSUE, levels=2)


@pytest.mark.parametrize("shape", [(96, 128), (768, 1024), (48, 64), (97, 128)])
def test_mask_selects_exactly_its_cells_at_any_resolution(syn: Path, shape: tuple[int, int]) -> None:
    # (97, 128): one mask pixel of rounding off the slide's aspect ratio is still the whole slide.
    plan = plan_slide(syn, patch_size=64, mask=mask_of([MASKED, TISSUE[0]], shape=shape))
    assert [(c.x, c.y) for c in plan.cells] == expected_cells(W, H, [MASKED, TISSUE[0]], 64)
    exact = shape[0] * W == shape[1] * H  # else cells straddle mask pixels
    assert all(c.tissue_fraction == 1.0 if exact else c.tissue_fraction > 0.8 for c in plan.cells)
    assert plan.tissue_source == "array" and plan.tissue.mask.shape == shape


def test_min_tissue_applies_to_the_mask_fraction(syn: Path) -> None:
    half = mask_of([(0, 512, 32, 576)], scale=1)  # the left half of the cell at (0, 512)
    with pytest.raises(SlideError, match=r"no tissue found \(no 64 px cell .* mask fraction \(array\) >= 0.6\)"):
        plan_slide(syn, patch_size=64, mask=half, min_tissue=0.6)
    cells = plan_slide(syn, patch_size=64, mask=half, min_tissue=0.5).cells
    assert [(c.x, c.y, c.tissue_fraction) for c in cells] == [(0, 512, 0.5)]


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_mask_file_manifest_summary_and_qc_say_its_source(syn: Path, tmp_path: Path, suffix: str) -> None:
    f = tmp_path / f"mine{suffix}"
    Image.fromarray(mask_of([MASKED]).astype(np.uint8) * 255).save(f)
    out, lines = tmp_path / "out", []
    extract(syn, out, patch_size=64, mask=f, workers=1, progress=False, log=lines.append)
    rows = read_manifest(out)
    assert sorted((r["x"], r["y"]) for r in rows) == sorted(expected_cells(W, H, [MASKED], 64))
    assert {r["tissue_source"] for r in rows} == {str(f)}
    assert len(lines) == 1 and lines[0].endswith(f"tissue from your mask {f}")
    assert (out / "syn.qc.png").is_file()


def test_automatic_detection_says_auto(syn: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extract(syn, out, patch_size=128, workers=1, progress=False, log=lambda m: None)
    assert {r["tissue_source"] for r in read_manifest(out)} == {"auto"}


def test_mask_that_does_not_fit_the_slide_is_one_error_with_both_shapes(syn: Path, tmp_path: Path) -> None:
    f = tmp_path / "square.png"
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(f)
    with pytest.raises(PatchError, match=rf"^{f}: mask does not match the slide's shape for slide {syn}: "
                                         r"mask 100 x 100 px, slide 1024 x 768 px \(width x height\), "
                                         r"aspect ratios 1.000 vs 1.333"):
        extract(syn, tmp_path / "o", mask=f, workers=1, progress=False)
    with pytest.raises(PatchError, match=r"^array: mask too small .*mask 4 x 3 px, slide 1024 x 768 px"):
        plan_slide(syn, mask=np.ones((3, 4), bool))
    assert not list((tmp_path / "o").glob("*/*.png"))


def test_empty_mask_is_the_no_tissue_error(syn: Path, tmp_path: Path) -> None:
    with pytest.raises(SlideError, match=r"syn.tiff: no tissue found \(the mask array is empty\)"):
        extract(syn, tmp_path / "o", mask=np.zeros((96, 128), bool), workers=1, progress=False)


def test_one_mask_for_several_slides_is_refused_before_any_slide(syn: Path, tmp_path: Path) -> None:
    other = write_slide(tmp_path / "other.tiff", 512, 512, [(0, 0, 512, 512)], levels=1)
    with pytest.raises(PatchError, match=r"one mask \(an array\) for 2 slides: give a folder"):
        extract([syn, other], tmp_path / "o", mask=mask_of([MASKED]), progress=False)
    with pytest.raises(PatchError, match=r"nope.png: no such mask file or folder"):
        extract(syn, tmp_path / "o", mask=tmp_path / "nope.png", progress=False)
    assert not (tmp_path / "o").exists()


def test_resume_with_a_mask_is_byte_identical(syn: Path, tmp_path: Path) -> None:
    m = mask_of([MASKED, *TISSUE])
    ref, out = tmp_path / "ref", tmp_path / "out"
    extract(syn, ref, patch_size=64, mask=m, workers=1, progress=False, log=lambda _: None)
    extract(syn, out, patch_size=64, mask=m, workers=2, progress=False, log=lambda _: None)
    pngs = sorted(out.rglob("*.png"))
    for p in pngs[::2]:  # an interrupted run: half the patches missing
        if p.parent != out:
            p.unlink()
    lines: list[str] = []
    extract(syn, out, patch_size=64, mask=m, workers=2, progress=False, log=lines.append)
    assert tree_digest(out) == tree_digest(ref)
    assert "kept" in lines[0] and " 0 kept" not in lines[0]
    # Another mask selecting other cells: refused, nothing lost.
    with pytest.raises(PatchError, match=r"another selection of cells .*the mask"):
        extract(syn, out, patch_size=64, mask=mask_of([MASKED]), workers=1, progress=False)
    assert tree_digest(out) == tree_digest(ref)


def test_mask_folder_and_a_slide_without_mask(syn: Path, tmp_path: Path) -> None:
    other = write_slide(tmp_path / "other.tiff", 512, 512, [], levels=1)  # all glass: only the mask selects
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(masks / "other.png")
    nomask = write_slide(tmp_path / "nomask.tiff", 512, 512, [(0, 0, 512, 512)], levels=1)
    errors: list[Exception] = []
    out = tmp_path / "out"
    extract([syn, other, nomask], out, patch_size=128, mask=masks, workers=1, progress=False,
            on_error=errors.append, log=lambda _: None)
    assert [str(e) for e in errors] == [
        f"{masks / 'syn.png'}: no mask for slide syn in {masks} (masks are named <slide stem>.png)",
        f"{masks / 'nomask.png'}: no mask for slide nomask in {masks} (masks are named <slide stem>.png)",
    ]
    rows = read_manifest(out)
    assert {r["slide"] for r in rows} == {"other"} and len(rows) == 16
    assert {r["tissue_source"] for r in rows} == {str(masks / "other.png")}
    # A dict slide name -> mask does the same in Python.
    out2 = tmp_path / "out2"
    extract([syn, other], out2, patch_size=128, mask={"syn": mask_of([MASKED]), "other": np.ones((8, 8), bool)},
            workers=1, progress=False, log=lambda _: None)
    assert sorted((r["slide"], r["x"], r["y"]) for r in read_manifest(out2) if r["slide"] == "syn") == sorted(
        ("syn", x, y) for x, y in expected_cells(W, H, [MASKED], 128))


def test_user_mask_maps_the_whole_slide() -> None:
    tm = user_mask(np.eye(8, dtype=bool)[:, ::-1].repeat(2, 1), (1600, 800))  # 8 x 16 px for 1600 x 800
    assert tm.scale == (0.01, 0.01) and tm.threshold is None and tm.source == "array"
    assert tm.fraction(1400, 0, 200, 100) == 1.0 and tm.fraction(0, 0, 200, 100) == 0.0


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aeutils", "extract", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_mask_errors_are_one_line(syn: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(bad)
    r = _cli(syn, "--out", tmp_path / "o", "--mask", bad, "--quiet", "--workers", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: {bad}: mask does not match the slide's shape for slide {syn}: mask 100 x 100 px, slide 1024 x 768 px "
        f"(width x height), aspect ratios 1.000 vs 1.333; a mask covers the whole slide at any resolution"]
    r = _cli(syn, syn.with_name("x.tiff"), "--out", tmp_path / "o", "--mask", bad, "--quiet")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {bad}: --mask is one slide's mask, given for 2 slides; use --mask-dir DIR with <slide stem>.png masks"]
    r = _cli(syn, "--out", tmp_path / "o", "--mask-dir", tmp_path / "none", "--quiet")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {tmp_path / 'none'}: --mask-dir is not a folder"]


def test_cli_mask_dir(syn: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(mask_of([MASKED]).astype(np.uint8)).save(masks / "syn.png")  # 0/1 values: nonzero = tissue
    r = _cli(syn, "--out", tmp_path / "o", "--mask-dir", masks, "--patch-size", "128", "--quiet", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "tissue from your mask" in r.stdout
    assert {(x["x"], x["y"]) for x in read_manifest(tmp_path / "o")} == set(expected_cells(W, H, [MASKED], 128))


def test_qc_figure_outlines_and_names_your_mask(syn: Path, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from aeutils.patches import plot_grid

    f = tmp_path / "left.png"
    Image.fromarray(mask_of([MASKED])).save(f)
    plan = plan_slide(syn, patch_size=64, mask=f)
    ax = plot_grid(plan, plan.cells)
    assert ax.get_title() == "syn: 16 patches (unlabeled 16); tissue: your mask left.png"
    # The yellow outline is your mask's: its contour lies on the masked rectangle's edge, not on the tissue.
    (contour,) = [c for c in ax.collections if type(c).__name__ in ("QuadContourSet", "ContourSet")]
    xy = np.concatenate([p.vertices for p in contour.get_paths()])
    sx = plan.thumbnail.shape[1] / W
    assert xy[:, 0].max() == pytest.approx(256 * sx, abs=3) and xy[:, 1].min() == pytest.approx(512 * sx, abs=3)
