"""Smoke run of bench/encode_slide.py: the three arms run on one slide in the same process and the
returned numbers are consistent (ratios are the measured time ratios, patch counts match the grid)."""
from __future__ import annotations

import sys
from pathlib import Path

from synthetic import write_slide

ROOT = Path(__file__).resolve().parent.parent


def test_bench_encode_smoke(tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import encode_slide

    slide = write_slide(tmp_path / "bench.tiff", 1100, 900, ((100, 100, 500, 400), (600, 450, 1000, 800)), levels=3)
    res = encode_slide.main(["--smoke", "--slide", str(slide), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert (res.width, res.height) == (1100, 900)
    assert res.naive_patches == 6 * 5  # ceil(1100 / 184) x ceil(900 / 184)
    assert 0 < res.naive_tissue_patches < res.naive_patches and res.tissue_tiles >= 1
    for s in (res.naive_s, res.naive_tissue_s, res.ours_s):
        assert s > 0
    assert abs(res.ratio - res.naive_s / res.ours_s) < 1e-9
    assert abs(res.ratio_tissue - res.naive_tissue_s / res.ours_s) < 1e-9
    assert abs(res.ours_mpx_s - 1100 * 900 / 1e6 / res.ours_s) < 1e-9
    assert res.ours_cpu_s > 0 and abs(res.cpu_ratio - res.naive_cpu_s / res.ours_cpu_s) < 1e-9 and res.repeats == 1
    assert (tmp_path / "out" / "encode_smoke" / "bench.encoding.tiff").is_file()
    assert f"speed-up: {res.ratio:.2f}x" in printed and "CPU:" in printed
