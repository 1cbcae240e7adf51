"""Smoke run of bench/encode_slide.py: the three arms run on one slide in the same process and the
returned numbers are consistent (ratios are the measured time ratios, patch counts match the grid)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

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
    assert 0 < res.tissue_fraction < 1 and 0 < res.encoded_fraction <= 1
    assert res.encoded_fraction > res.tissue_fraction  # whole tiles around the tissue are encoded
    assert res.reader.startswith("tile decoding") and len(res.ours_runs) == len(res.speed_choices) == 1
    assert f"speed-up over the naive loop: {res.ratio:.2f}x wall" in printed and "CPU:" in printed


def test_sparse_bench_slide(tmp_path: Path) -> None:
    """The bench slide: copies of the sample at the planned places on the sample's glass colour, 3 levels,
    the sample's mpp; the tissue mask finds the pieces and not the glass between them."""
    sys.path.insert(0, str(ROOT / "bench"))
    import encode_slide

    from aeutils.slides import open_slide
    from aeutils.tissue import detect_tissue

    path = encode_slide.build_sparse_slide(tmp_path / "sparse.tiff", (4864, 3328), 2)
    with open_slide(tmp_path / "bench_sample_1x1.tiff") as d:
        piece = d.read_region(0, 0, 0, (2208, 2960)).astype(np.int16)
    with open_slide(path) as s:
        assert s.dimensions == (4864, 3328) and s.level_count == 3 and s.mpp == 0.499
        (x0, y0), (x1, y1) = encode_slide.piece_positions((4864, 3328), 2, (2208, 2960))
        assert x0 + 2208 <= x1  # side by side, not overlapping
        got = s.read_region(x1, y1, 0, (2208, 2960)).astype(np.int16)
        assert np.abs(got - piece).mean() < 3  # the piece, through one more JPEG round
        gap = s.read_region(x0 + 2208, 0, 0, (x1 - x0 - 2208, 3328)).astype(np.int16)
        assert gap.min() > 190 and (gap.max(2) - gap.min(2)).max() < 30  # glass between the pieces
        _, tissue = detect_tissue(s, 2048)
        assert tissue.fraction(x1, y1, 2208, 2960) > 0.2 and tissue.fraction(x0 + 2208, 0, x1 - x0 - 2208, 3328) == 0
