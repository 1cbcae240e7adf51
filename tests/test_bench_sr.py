"""bench/sr_losses.py --smoke: every arm trains, the weight rule and the judges return numbers as data."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("piq")
pytest.importorskip("stlpips_pytorch")
pytest.importorskip("pandas")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import sr_losses  # noqa: E402


def test_choose_weight_rule():
    rows = [{"weight": 1.0, "psnr": 25.9, "stlpips": 0.30}, {"weight": 3.0, "psnr": 25.75, "stlpips": 0.25},
            {"weight": 10.0, "psnr": 25.5, "stlpips": 0.20}]
    assert sr_losses.choose_weight(rows, 26.0) == 3.0  # 10x is best but outside the 0.3 dB budget
    assert sr_losses.choose_weight(rows, 27.0) == 1.0  # none within: the smallest


def test_smoke_run_returns_judged_arms(tmp_path):
    res = sr_losses.main(["--smoke", "--out", str(tmp_path)])
    t = res.table
    assert {"bicubic", "mse", "encoding", "random"} <= set(t.index)
    ran = set(t.index) - {"bicubic"}
    assert ran | set(res.skipped) == set(sr_losses.ARMS)  # every arm ran or says why not
    assert "vgg19" in res.skipped  # no weights file passed
    for j in sr_losses.JUDGES:
        assert np.isfinite(t[j]).all() and (t[f"{j}_lo"] <= t[j] + 1e-12).all() and (t[j] <= t[f"{j}_hi"] + 1e-12).all()
    assert (t["psnr"] > 10).all() and ((0 < t["stlpips"]) & (t["stlpips"] < 1)).all()
    assert ((0 < t["haarpsi"]) & (t["haarpsi"] <= 1)).all()
    assert res.weights["encoding"] > 0 and set(res.val["arm"]) == ran
    assert "stlpips_margin_met" in res.goal and isinstance(res.goal["met"], bool)
    names = sorted(p.name for p in (tmp_path / "hr").iterdir())
    assert len(names) == res.n_test == 2
    for method in ("bicubic", *ran):
        assert sorted(p.name for p in (tmp_path / method).iterdir()) == names
    assert (tmp_path / "crops.png").stat().st_size > 1000


def test_eval_images_folder(tmp_path):
    from PIL import Image

    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 54, 3), dtype=np.uint8)).save(src / "a.png")
    names, ims = sr_losses.load_eval_images(src)
    assert names == ["a"] and ims[0].shape == (3, 48, 52)  # cropped to multiples of 4
