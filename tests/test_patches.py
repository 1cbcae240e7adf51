"""aeutils.patches: grid planning (exact coordinates, labels), pixel identity, output tree, resume."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from aeutils.errors import AnnotationError, PatchError, SlideError
from aeutils.patches import (
    MANIFEST_COLUMNS,
    extract,
    plan_grid,
    plan_slide,
    plot_grid,
    read_manifest,
)
from aeutils.patches.runner import blocks, run_task
from synthetic import asap_xml, expected_cells, rect_polygon, write_slide

W, H = 1024, 768
TISSUE = ((128, 128, 512, 384), (640, 384, 896, 640))


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slide(tmp_path_factory.mktemp("patches") / "syn.tiff", W, H, TISSUE, levels=3)


def _ref(slide: Path, x: int, y: int, level: int, size: int) -> np.ndarray:
    return np.asarray(openslide.OpenSlide(str(slide)).read_region((x, y), level, (size, size)).convert("RGB"))


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative POSIX path -> hex)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("level,size,stride", [(0, 64, None), (1, 64, None), (0, 64, 32), (2, 32, None)])
def test_grid_exact_coordinates(syn: Path, level: int, size: int, stride: int | None) -> None:
    # With stride < size some cells are exactly half tissue: ask for nearly whole cells.
    cells = plan_grid(syn, patch_size=size, level=level, stride=stride, min_tissue=0.9 if stride else 0.5)
    want = expected_cells(W, H, TISSUE, size, stride, downsample=2**level)
    assert [(c.x, c.y) for c in cells] == want
    assert all(c.level == level and c.size == size for c in cells)
    assert all(c.tissue_fraction > 0.95 and c.label is None and c.tumour_fraction is None for c in cells)


def test_min_tissue(syn: Path) -> None:
    # Cells of 96 px straddle the rectangle edges: a strict threshold keeps fewer cells.
    loose = plan_grid(syn, patch_size=96, min_tissue=0.2)
    strict = plan_grid(syn, patch_size=96, min_tissue=0.99)
    assert len(strict) < len(loose)
    assert all(c.tissue_fraction >= 0.99 for c in strict) and all(c.tissue_fraction >= 0.2 for c in loose)
    assert {(c.x, c.y) for c in strict} == set(expected_cells(W, H, TISSUE, 96))


def test_labels_from_asap_xml(syn: Path, tmp_path: Path) -> None:
    xml = tmp_path / "syn.xml"
    # Tumour over x in [128, 344) of the first rectangle, minus the cell at (192, 192).
    xml.write_text(asap_xml([rect_polygon(128, 128, 344, 384)], [rect_polygon(192, 192, 256, 256)]))
    cells = {(c.x, c.y): c for c in plan_grid(syn, patch_size=64, annotations=xml)}
    assert len(cells) == len(expected_cells(W, H, TISSUE, 64))
    tumour = {k for k, c in cells.items() if c.label == 1}
    want = {(x, y) for x in (128, 192, 256) for y in (128, 192, 256, 320)} - {(192, 192)}
    assert tumour == want
    assert cells[(320, 128)].tumour_fraction == pytest.approx(24 / 64, abs=0.02) and cells[(320, 128)].label == 0
    assert cells[(192, 192)].tumour_fraction == 0.0 and cells[(192, 192)].label == 0
    assert cells[(640, 384)].tumour_fraction == 0.0 and cells[(640, 384)].label == 0
    assert cells[(128, 128)].tumour_fraction == 1.0


def test_annotation_folder_and_keep(syn: Path, tmp_path: Path) -> None:
    d = tmp_path / "ann"
    d.mkdir()
    (d / "syn.xml").write_text(asap_xml([rect_polygon(640, 384, 896, 640)], tumour_group="Tumor"))
    out = tmp_path / "out"
    extract(syn, out, patch_size=64, annotations=d, keep="tumour", workers=1, progress=False)
    rows = read_manifest(out)
    assert len(rows) == 16 and {r["label"] for r in rows} == {1}
    assert all(r["path"].startswith("tumour/") for r in rows)
    assert not (out / "normal").exists()


def test_keep_needs_annotations(syn: Path, tmp_path: Path) -> None:
    with pytest.raises(PatchError, match="needs annotations"):
        extract(syn, tmp_path / "o", keep="normal", progress=False)


@pytest.mark.parametrize("level", [0, 1])
def test_block_reads_equal_single_reads(syn: Path, tmp_path: Path, level: int) -> None:
    plan = plan_slide(syn, patch_size=64, level=level)
    tasks = blocks(plan, tmp_path, plan.cells)
    reads = [r for t in tasks for r in t.reads]
    assert len(reads) < len(plan.cells)  # neighbours really are read together
    for t in tasks:
        result = run_task(t)
        assert result.error is None and len(result.sizes) == len(t.paths())
    for c in plan.cells:
        got = np.asarray(Image.open(tmp_path / c.relpath(plan.name)))
        np.testing.assert_array_equal(got, _ref(syn, c.x, c.y, level, 64))


def test_non_integer_downsample_reads_per_patch(tmp_path: Path) -> None:
    p = write_slide(tmp_path / "odd.tiff", 1001, 751, [(0, 0, 1001, 751)], levels=2)
    plan = plan_slide(p, patch_size=100, level=1)
    assert not float(plan.downsample).is_integer()
    out = tmp_path / "o"
    tasks = blocks(plan, out, plan.cells)
    assert sum(len(t.reads) for t in tasks) == len(plan.cells)  # one read per cell
    for t in tasks:
        run_task(t)
    for c in plan.cells:
        np.testing.assert_array_equal(np.asarray(Image.open(out / c.relpath(plan.name))), _ref(p, c.x, c.y, 1, 100))


def test_sample_slide_pixels_identical(sample_slide_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    manifest = extract(sample_slide_path, out, workers=2, progress=False)
    rows = read_manifest(out)
    assert manifest == out / "manifest.csv"
    assert manifest.read_text().splitlines()[0] == ",".join(MANIFEST_COLUMNS)
    assert len(rows) > 30
    osr = openslide.OpenSlide(str(sample_slide_path))
    for r in rows:
        assert r["size"] == 181 and r["level"] == 0 and r["mpp"] == pytest.approx(0.499)
        assert (r["slide_width"], r["slide_height"], r["downsample"]) == (2220, 2967, 1.0)
        assert r["x"] % 181 == 0 and r["y"] % 181 == 0 and r["tissue_fraction"] >= 0.5
        assert r["path"] == f"unlabeled/CMU-1-Small-Region_{r['x']}_{r['y']}.png"
        ref = np.asarray(osr.read_region((r["x"], r["y"]), 0, (181, 181)).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(Image.open(out / r["path"]).convert("RGB")), ref)
    assert (out / "CMU-1-Small-Region.qc.png").is_file()
    assert sorted(p.name for p in (out / "unlabeled").iterdir()) == sorted(Path(r["path"]).name for r in rows)


def test_resume_is_byte_identical(syn: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    extract(syn, a, patch_size=64, workers=1, progress=False)
    extract(syn, b, patch_size=64, workers=1, progress=False)
    want = tree_digest(a)
    assert tree_digest(b) == want
    # Simulate a crash: half the patches gone, a stale partial manifest, a leftover temp file.
    pngs = sorted((b / "unlabeled").glob("*.png"))
    for p in pngs[::2]:
        p.unlink()
    kept = {p: p.stat().st_ino for p in pngs[1::2]}
    lines = (b / "manifest.csv").read_text().splitlines(keepends=True)
    (b / "manifest.csv").write_text("".join(lines[:5]))
    (b / "unlabeled" / f".{pngs[0].name}.abc123.tmp").write_bytes(b"half a png")
    extract(syn, b, patch_size=64, workers=1, progress=False)
    assert tree_digest(b) == want
    assert all(p.stat().st_ino == ino for p, ino in kept.items())  # finished patches were not redone


def test_rerun_with_other_grid_is_refused_then_overwritten(syn: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    extract(syn, out, patch_size=64, workers=1, progress=False)
    before = tree_digest(out)
    with pytest.raises(PatchError, match=r"slide syn was extracted here with --patch-size 64 \(now 128\); "
                                         r"40 patches would be replaced: use another --out, or --overwrite"):
        extract(syn, out, patch_size=128, workers=1, progress=False)
    assert tree_digest(out) == before  # nothing deleted, nothing added
    extract(syn, out, patch_size=128, workers=1, progress=False, overwrite=True)
    rows = read_manifest(out)
    assert {r["size"] for r in rows} == {128}
    assert sorted(p.name for p in (out / "unlabeled").iterdir()) == sorted(Path(r["path"]).name for r in rows)
    for r in rows:
        assert Image.open(out / r["path"]).size == (128, 128)


def test_manifest_keeps_other_slides(syn: Path, tmp_path: Path) -> None:
    other = write_slide(tmp_path / "other.tiff", 512, 512, [(0, 0, 256, 256)], levels=1)
    out = tmp_path / "o"
    extract([syn, other], out, patch_size=64, workers=1, progress=False)
    both = read_manifest(out)
    extract(other, out, patch_size=64, workers=1, progress=False)
    assert read_manifest(out) == both
    assert [r["slide"] for r in both] == sorted(r["slide"] for r in both)


def test_errors_do_not_stop_other_slides(syn: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.svs"
    bad.write_text("no slide")
    seen = []
    extract([bad, syn], tmp_path / "o", patch_size=64, workers=1, progress=False, on_error=seen.append)
    assert len(seen) == 1 and "bad.svs" in str(seen[0])
    assert {r["slide"] for r in read_manifest(tmp_path / "o")} == {"syn"}
    with pytest.raises(SlideError, match="bad.svs"):
        extract([bad, syn], tmp_path / "o2", patch_size=64, workers=1, progress=False)
    assert read_manifest(tmp_path / "o2")  # the good slide was still done


def test_plan_errors(syn: Path, tmp_path: Path) -> None:
    with pytest.raises(SlideError, match=r"syn\.tiff: patch size 200 px is larger than level 2 \(256 x 192 px\)"):
        plan_grid(syn, patch_size=200, level=2)
    with pytest.raises(SlideError, match=r"syn\.tiff: level 5 out of range"):
        plan_grid(syn, level=5)
    blank = write_slide(tmp_path / "blank.tiff", 256, 256, [], levels=1)
    with pytest.raises(SlideError, match=r"blank\.tiff: no tissue found"):
        plan_grid(blank, patch_size=64)
    with pytest.raises(PatchError, match="patch size must be a positive integer"):
        plan_grid(syn, patch_size=0)
    with pytest.raises(AnnotationError, match=r"nope\.xml"):
        extract(syn, tmp_path / "o", annotations=tmp_path / "nope.xml", progress=False)


def test_mpp_picks_level(syn: Path, tmp_path: Path) -> None:
    plan = plan_slide(syn, patch_size=32, level=None, mpp=1.0)
    assert plan.level == 1 and plan.mpp == pytest.approx(1.0)
    extract(syn, tmp_path / "o", patch_size=32, mpp=2.0, workers=1, progress=False)
    rows = read_manifest(tmp_path / "o")
    assert {r["level"] for r in rows} == {2} and {r["mpp"] for r in rows} == {2.0}
    assert {r["downsample"] for r in rows} == {4.0}


def test_read_manifest_missing(tmp_path: Path) -> None:
    with pytest.raises(PatchError, match="no such manifest"):
        read_manifest(tmp_path)


def test_plot_grid(syn: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = plan_grid(syn, patch_size=64)
    ax = plot_grid(syn, cells)
    assert len(ax.collections) >= 1 and "40 patches" in ax.get_title()
    plt.close(ax.figure)


def test_no_torch_on_the_extraction_path() -> None:
    import subprocess
    import sys

    code = "import aeutils.patches, aeutils.slides, aeutils.tissue, aeutils.annotations, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
