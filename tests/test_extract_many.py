"""Many slides: --max-patches (seeded, stable), --shard K/N + manifest merge, one progress bar with one
summary line per slide, option errors printed once, no bar fragments around error lines."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aeutils.manifest import merge_manifests
from aeutils.patches import extract, plan_slide, read_manifest, sample_cells, shard_of
from synthetic import write_slide
from test_cli_extract import run_cli
from test_patches import tree_digest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("many")
    return [write_slide(d / f"slide{i:02d}.tiff", 384, 384, [(0, 0, 384, 384)], levels=1, seed=i) for i in range(6)]


def test_max_patches_is_a_stable_uniform_sample(many: list[Path], tmp_path: Path) -> None:
    full = plan_slide(many[0], patch_size=32).cells  # 12 x 12 = 144 cells
    a, b = tmp_path / "a", tmp_path / "b"
    extract(many[0], a, patch_size=32, max_patches=20, workers=1, progress=False)
    rows = read_manifest(a)
    assert len(rows) == 20
    picked = {(r["x"], r["y"]) for r in rows}
    assert picked <= {(c.x, c.y) for c in full}
    assert picked != {(c.x, c.y) for c in full[:20]}  # a sample, not the first cells
    assert max(y for _, y in picked) - min(y for _, y in picked) > 200  # spread over the slide
    # Same on a rerun elsewhere, and on a resume after losing half of the files.
    extract(many[0], b, patch_size=32, max_patches=20, workers=2, progress=False)
    assert tree_digest(a) == tree_digest(b)
    for r in rows[::2]:
        (b / r["path"]).unlink()
    extract(many[0], b, patch_size=32, max_patches=20, workers=1, progress=False)
    assert tree_digest(a) == tree_digest(b)
    # A larger sample contains the smaller one (growing --max-patches keeps what was cut), other seeds differ.
    assert set(sample_cells(full, 20, "slide00")) <= set(sample_cells(full, 50, "slide00"))
    assert set(sample_cells(full, 20, "slide00", seed=1)) != set(sample_cells(full, 20, "slide00"))
    assert set(sample_cells(full, 20, "slide01")) != set(sample_cells(full, 20, "slide00"))


def test_shards_merge_into_the_unsharded_manifest(many: list[Path], tmp_path: Path) -> None:
    ref, out = tmp_path / "ref", tmp_path / "o"
    extract(many, ref, patch_size=64, workers=1, progress=False)
    n = 3
    assert len({shard_of(p.stem, n) for p in many}) > 1  # the split really splits
    done = []
    for k in range(1, n + 1):  # as N SLURM array jobs would, all into the same --out
        r = run_cli(*many, "--out", out, "--patch-size", "64", "--shard", f"{k}/{n}", "--quiet", "--workers", "1")
        assert r.returncode == 0, r.stderr
        mine = {p.stem for p in many if shard_of(p.stem, n) == k}
        if mine:
            shard_rows = read_manifest(out / f"manifest.shard-{k}-of-{n}.csv")
            assert {row["slide"] for row in shard_rows} == mine
        done += sorted(mine)
    assert sorted(done) == sorted(p.stem for p in many)  # each slide in exactly one shard
    assert not (out / "manifest.csv").exists()
    r = subprocess.run([sys.executable, "-m", "aeutils", "manifest", "merge", str(out)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert read_manifest(out) == read_manifest(ref)
    assert tree_digest(out) == tree_digest(ref)  # shard manifests folded in, nothing else differs
    # Or: rerun without --shard over the same folder: nothing redone, the same one manifest.
    for p in out.glob("manifest*.csv"):
        p.unlink()
    for k in (1, 2):
        run_cli(*many, "--out", out, "--patch-size", "64", "--shard", f"{k}/{n}", "--quiet", "--workers", "1")
    r = run_cli(*many, "--out", out, "--patch-size", "64", "--quiet", "--workers", "1")
    assert r.returncode == 0, r.stderr
    summaries = r.stdout.strip().splitlines()[:-1]
    assert len(summaries) == len(many) and all(" (0 new, " in line for line in summaries), r.stdout
    assert not list(out.glob("manifest.shard-*.csv"))  # folded into manifest.csv by the unsharded run
    assert tree_digest(out) == tree_digest(ref)


def test_merge_drops_rows_of_missing_files(many: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "o"
    extract(many[:2], out, patch_size=64, shard="1/1", workers=1, progress=False)
    rows = read_manifest(out / "manifest.shard-1-of-1.csv")
    (out / rows[0]["path"]).unlink()
    said: list[str] = []
    path, n = merge_manifests(out, log=said.append)
    assert n == len(rows) - 1 and len(said) == 1 and "1 rows of slide" in said[0]
    assert not list(out.glob("manifest.shard-*.csv"))


def _screen(line: str) -> str:
    """What a terminal shows for one line of output with carriage returns (later text overwrites)."""
    shown = ""
    for seg in line.split("\r"):
        shown = seg + shown[len(seg):]
    return shown.rstrip()


def test_one_bar_summary_per_slide_clean_error_lines(many: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_text("not a slide")
    r = run_cli(many[0], bad, many[1], "--out", tmp_path / "o", "--patch-size", "64", "--workers", "2")
    assert r.returncode == 2
    out_lines = r.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in out_lines[:2]] == ["slide00", "slide01"]  # one summary per slide
    assert "36 patches (36 new, 0 kept)" in out_lines[0] and "read level 0 at 0.5 um/px" in out_lines[0]
    shown = [_screen(line) for line in r.stderr.split("\n")]
    errors = [s for s in shown if "error" in s]
    assert errors == [f"error: {bad}: not a slide (OpenSlide does not recognise the format)"]
    bars = {s.split(":")[0] for s in shown if "patch/s" in s or "it/s" in s or "%|" in s}
    assert bars <= {"patches"}  # one bar over all slides, no per-slide bars
    assert any("patches: 100%" in s and "72/72" in s for s in shown), r.stderr


def test_option_error_printed_once_for_many_slides(many: list[Path], tmp_path: Path) -> None:
    r = run_cli(*many, "--out", tmp_path / "o", "--assume-mpp", "896", "--quiet")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: --assume-mpp 896 is outside the plausible 0.05-20 um/px"]
    r = run_cli(*many, "--out", tmp_path / "o", "--patch-size", "-3", "--quiet")
    assert r.stderr.strip().splitlines() == ["error: patch size must be a positive integer, got -3"]
