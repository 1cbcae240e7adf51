"""Smoke run of bench/extract.py: level 0 (both arms write the same patches with the same pixels) and
--mpp 0.5 on a smooth 40x pyramid (fidelity of each filter against the true pixels and the naive Lanczos
loop, and speed), with the returned ratios the measured ones."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import extract as bench  # noqa: E402  (bench/extract.py)


def test_bench_extract_smoke_numbers(tmp_path: Path) -> None:
    res = bench.run(smoke=True, workers=2, out=tmp_path, sources=("prostate",), filters=("lanczos", "area"))
    assert "AVX512_BF16" in res["cpu"] and res["workers"] == 2
    lvl0, rs = res["level0"], res["resampled"]["prostate"]
    assert lvl0["ok"] and rs["ok"], (lvl0, rs)
    assert lvl0["identical"] and lvl0["compared"] == lvl0["patches"] > 10
    assert (lvl0["level"], lvl0["factor"]) == (0, 1.0) and lvl0["max_abs_diff"] == 0
    # The resampled case really resamples level 0 of a 40x pyramid x2 to 0.5 um/px.
    assert (rs["level"], rs["factor"], rs["default"]) == (0, 2.0, "lanczos") and rs["mpp"] == pytest.approx(0.5)
    assert rs["patches"] > 10 and lvl0["tile_decoding"] and rs["tile_decoding"], (lvl0["reader"], rs["reader"])
    nv, lz, area = rs["naive"], rs["filters"]["lanczos"], rs["filters"]["area"]
    # Fidelity: the default gives the careful naive resample's pixels; area blurs this smooth tissue.
    assert nv["psnr_truth_median"] > 40 and nv["psnr_truth_worst"] <= nv["psnr_truth_median"]
    assert lz["identical_to_naive"] and lz["gap_db"] == pytest.approx(0.0, abs=1e-9)
    assert lz["psnr_truth_median"] == pytest.approx(nv["psnr_truth_median"])
    assert area["gap_db"] > 0.5 and not area["identical_to_naive"] and 40 < area["psnr_naive_median"] < 99
    assert area["gap_db"] == pytest.approx(nv["psnr_truth_median"] - area["psnr_truth_median"])
    # Speed: each ratio is the measured one (no timing thresholds in a unit test).
    for case in (lvl0,):
        assert case["speedup"] == pytest.approx(case["ours_patches_per_s"] / case["naive_patches_per_s"], rel=1e-9)
        assert case["speedup"] == pytest.approx(case["naive_s"] / case["ours_s"], rel=1e-9)
        assert case["speedup_best"] == pytest.approx(case["naive_s_best"] / case["ours_s_best"], rel=1e-9)
    for f in (lz, area):
        assert f["speedup"] == pytest.approx(nv["s"] / f["s"], rel=1e-9)
        assert f["speedup"] == pytest.approx(f["patches_per_s"] / nv["patches_per_s"], rel=1e-9)
        assert f["speedup_best"] == pytest.approx(nv["s_best"] / f["s_best"], rel=1e-9)
        assert f["cpu_ratio"] == pytest.approx(nv["cpu_ms_per_patch"] / f["cpu_ms_per_patch"], rel=1e-9)


def test_bench_extract_cli_prints_fidelity_and_speed(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "extract.py"), "--smoke", "--workers", "2",
                        "--case", "resampled", "--sources", "prostate", "--filters", "lanczos", "area",
                        "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("CPU: ") and "AVX512_BF16" in line for line in lines), r.stdout
    lz = [line for line in lines if "--resample-filter lanczos  (default)" in line]
    area = [line for line in lines if "--resample-filter area" in line]
    assert len(lz) == len(area) == 1, r.stdout
    assert "(+0.00 dB vs naive), vs naive identical" in lz[0] and "x the naive loop" in lz[0]
    assert " dB vs naive), vs naive " in area[0] and "identical" not in area[0]


def test_build_slide_keeps_its_signature(tmp_path: Path) -> None:
    # bench/encode_slide.py calls build_slide(path, reps_x, reps_y) positionally.
    from aeutils.slides import open_slide

    p = bench.build_slide(tmp_path / "t.tiff", 1, 1)
    with open_slide(p) as s:
        assert s.dimensions == (2220, 2967) and s.level_count == 3 and s.mpp == pytest.approx(0.499)
