"""bench/sr_losses.py (over aeutils.sr.bench) --smoke: every arm trains, the weight rule and the judges
return numbers as data."""
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
    # the encoder arms' tap sets compete under the same rule: the row (setting, weight) is chosen
    rows = [{"setting": "stage1", "weight": 0.1, "psnr": 25.9, "stlpips": 0.26},
            {"setting": "stage1+stage2", "weight": 0.05, "psnr": 25.8, "stlpips": 0.24},
            {"setting": "stage1+stage2", "weight": 0.15, "psnr": 25.6, "stlpips": 0.21}]
    assert sr_losses.choose(rows, 26.0)["setting"] == "stage1+stage2" and sr_losses.choose(rows, 26.0)["weight"] == 0.05


def test_weight_search_stops_at_the_budget():
    from aeutils.sr.bench import weight_search

    psnr = {0.1: 26.0, 0.3: 25.9, 1.0: 25.8, 3.0: 25.75, 10.0: 25.0, 30.0: 24.0}
    calls = []

    def fit_eval(m):
        calls.append(m)
        return {"multiple": m, "weight": m, "psnr": psnr[m], "stlpips": 1 / m}

    rows = weight_search(fit_eval, 26.0, grid=(1.0, 3.0, 10.0, 30.0), down=(0.3, 0.1))
    assert calls == [1.0, 3.0, 10.0]  # 3x is within 0.3 dB, 10x is not: 30x is never trained
    assert sr_losses.choose(rows, 26.0)["multiple"] == 3.0
    calls.clear()
    rows = weight_search(fit_eval, 26.15, grid=(1.0, 3.0), down=(0.3, 0.1))
    assert calls == [1.0, 0.3]  # 1x already out (25.8 < 25.85): go down until one is within
    assert sr_losses.choose(rows, 26.15)["multiple"] == 0.3


def test_goal_parts():
    import pandas as pd

    t = pd.DataFrame({"psnr": [26.0, 25.8, 26.0, 25.0], "haarpsi": [0.70, 0.698, 0.70, 0.69],
                      "stlpips": [0.30, 0.28, 0.31, 0.285]}, index=["mse", "encoding", "random", "imagenet"])
    g = sr_losses.goal(t)
    assert abs(g["stlpips_vs_best_of_mse_random"] - (0.28 / 0.30 - 1)) < 1e-12 and g["stlpips_margin_met"]
    assert abs(g["psnr_cost_db"] - 0.2) < 1e-9 and g["distortion_budget_met"]
    assert g["best_imagenet_arm"] == "imagenet" and g["at_least_as_good_as_best_imagenet"] and g["met"]
    t.loc["encoding", "psnr"] = 25.6  # 0.4 dB cost: over budget
    assert not sr_losses.goal(t)["met"]


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
    assert res.settings["encoding"] == res.table.loc["encoding", "setting"] == "stage1/instance"
    assert res.threads == 1 and "thread" in res.cpu
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
    (src / "b.png").write_bytes(b"not a png")
    from aeutils.errors import PatchError

    with pytest.raises(PatchError, match="b.png"):
        sr_losses.load_eval_images(src)
    with pytest.raises(PatchError, match="no such folder"):
        sr_losses.load_eval_images(tmp_path / "missing")


def test_choose_threads_measures_both():
    import torch

    from aeutils.sr.bench import choose_threads

    hr = torch.rand(2, 3, 16, 16)
    n, per_step = choose_threads(hr, None, batch_size=2, channels=4, n_blocks=1, steps=1, rounds=1)
    assert n in per_step and 1 in per_step and all(v > 0 for v in per_step.values())
