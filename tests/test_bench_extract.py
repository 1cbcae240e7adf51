"""Smoke run of bench/extract.py: both cases (level 0; --mpp 0.5 on a 40x pyramid), both arms write the
same patches with the same pixels, and the returned ratios are the measured ones."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import extract as bench  # noqa: E402  (bench/extract.py)


def test_bench_extract_smoke_numbers(tmp_path: Path) -> None:
    res = bench.run(smoke=True, workers=2, out=tmp_path)
    assert "AVX512_BF16" in res["cpu"] and res["workers"] == 2
    lvl0, rs = res["level0"], res["resampled"]
    assert lvl0["ok"] and rs["ok"], (lvl0, rs)
    assert lvl0["identical"] and lvl0["compared"] == lvl0["patches"] > 10
    assert (lvl0["level"], lvl0["factor"]) == (0, 1.0)
    # The resampled case really resamples level 0 of a 40x pyramid to 0.5 um/px, and both arms agree.
    assert rs["level"] == 0 and rs["factor"] == pytest.approx(2.004, abs=1e-3) and rs["mpp"] == pytest.approx(0.5)
    assert rs["patches"] > 5 and rs["psnr_min"] >= 35
    # Both read the bench's JPEG pyramid by tile decoding (checked bit-identical to OpenSlide at open),
    # and the resampled patches agree with the naive PIL resize of OpenSlide's pixels exactly.
    assert lvl0["tile_decoding"] and rs["tile_decoding"], (lvl0["reader"], rs["reader"])
    assert rs["identical"] and rs["max_abs_diff"] == 0 == lvl0["max_abs_diff"]
    for case in (lvl0, rs):
        assert case["naive_patches_per_s"] > 0 and case["ours_patches_per_s"] > 0
        assert case["speedup"] == pytest.approx(case["ours_patches_per_s"] / case["naive_patches_per_s"], rel=1e-9)
        assert case["speedup"] == pytest.approx(case["naive_s"] / case["ours_s"], rel=1e-9)
        assert case["speedup_best"] == pytest.approx(case["naive_s_best"] / case["ours_s_best"], rel=1e-9)
        assert case["cpu_ratio"] == pytest.approx(case["naive_cpu_ms_per_patch"] / case["ours_cpu_ms_per_patch"], rel=1e-9)


def test_bench_extract_cli_prints_the_ratios(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "extract.py"), "--smoke", "--workers", "2",
                        "--case", "resampled", "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[--mpp 0.5 on 40x] speed-up: " in r.stdout and "CPU: " in r.stdout


def test_build_slide_keeps_its_signature(tmp_path: Path) -> None:
    # bench/encode_slide.py calls build_slide(path, reps_x, reps_y) positionally.
    from aeutils.slides import open_slide

    p = bench.build_slide(tmp_path / "t.tiff", 1, 1)
    with open_slide(p) as s:
        assert s.dimensions == (2220, 2967) and s.level_count == 3 and s.mpp == pytest.approx(0.499)
