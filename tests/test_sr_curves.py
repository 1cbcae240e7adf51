"""aeutils.sr.curves and report: matched-distortion comparison of perception-distortion curves, and the
compact test table (no training: synthetic per-image judgements)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aeutils.metrics.judges import JUDGES, bootstrap
from aeutils.sr import curves as C
from aeutils.sr.report import best_methods, compact_table


def _point(psnr: float, stlpips: float, n: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 0.2, n)  # the same images for every point: per-image offsets shared (paired)
    return {"psnr": psnr + noise, "haarpsi": 0.8 + 0.01 * (psnr - 25) + 0.001 * noise,
            "stlpips": stlpips + 0.01 * noise + 0.002 * np.random.default_rng(seed + 1).normal(0, 1, n),
            "nuclei_f1": np.full(n, 0.8)}


def test_matched_compares_curves_over_their_shared_range():
    # a: ST-LPIPS 0.02 below b at every PSNR; a reaches further down in PSNR than b
    per = {"a1": _point(25.0, 0.30), "a2": _point(24.0, 0.25), "a3": _point(23.0, 0.20),
           "b1": _point(25.2, 0.33), "b2": _point(24.2, 0.28)}
    r = C.matched(per, ["a1", "a2", "a3"], ["b1", "b2"], n_boot=300)
    assert r["x_lo"] == pytest.approx(24.2, abs=0.1) and r["x_hi"] == pytest.approx(25.0, abs=0.1)
    assert r["diff"] < -0.05 and r["lo"] <= r["diff"] <= r["hi"] < 0 and r["overlap"] == 1.0
    same = C.matched(per, ["b1", "b2"], ["b1", "b2"], n_boot=50)
    assert same["diff"] == pytest.approx(0.0, abs=1e-12)
    apart = C.matched(per, ["a3"], ["b1", "b2"], n_boot=50)  # one point far below b's range: nothing shared
    assert np.isnan(apart["diff"])


def test_headline_uses_each_arms_chosen_setting():
    per = {"mse": _point(26.0, 0.40), "enc_s1_x1": _point(25.0, 0.30), "enc_s1_x3": _point(24.0, 0.25),
           "enc_s2_x1": _point(25.0, 0.50), "enc_s2_x3": _point(24.0, 0.45),
           "rnd_x1": _point(25.1, 0.33), "rnd_x3": _point(24.1, 0.28)}
    points = pd.DataFrame([("mse", "", 0.0, "mse"), ("encoding", "s1", 1.0, "enc_s1_x1"), ("encoding", "s1", 3.0, "enc_s1_x3"),
                           ("encoding", "s2", 1.0, "enc_s2_x1"), ("encoding", "s2", 3.0, "enc_s2_x3"),
                           ("random", "", 1.0, "rnd_x1"), ("random", "", 3.0, "rnd_x3")],
                          columns=["arm", "setting", "multiple", "label"])
    head = C.headline(points, per, {"mse": "", "encoding": "s1", "random": ""}, n_boot=100)
    row = head[(head["distortion"] == "psnr") & (head["judge"] == "stlpips")].iloc[0]
    assert row["vs"] == "random" and row["diff"] < 0  # s1 lies below random; s2 (not chosen) would lie above
    head2 = C.headline(points, per, {"mse": "", "encoding": "s2", "random": ""}, n_boot=100)
    assert head2[(head2["distortion"] == "psnr") & (head2["judge"] == "stlpips")].iloc[0]["diff"] > 0
    lines = C.headline_lines(head, C.chosen_differences({"encoding": per["enc_s1_x1"], "mse": per["mse"]}, n_boot=100))
    assert any(line.startswith("encoding vs random at matched PSNR") for line in lines)
    assert any(line.startswith("chosen points, encoding vs mse: ST-LPIPS -") for line in lines)


def test_compact_table_marks_the_best_arm_per_judge():
    rng = np.random.default_rng(0)
    per = {m: {j: rng.random(8) for j in JUDGES} for m in ("bicubic", "mse", "encoding")}
    per["bicubic"]["stlpips"] = np.zeros(8)  # bicubic is never "best": it is the baseline
    per["encoding"]["stlpips"] = np.full(8, 0.1)
    per["mse"]["stlpips"] = np.full(8, 0.2)
    per["encoding"]["psnr"], per["mse"]["psnr"] = np.full(8, 20.0), np.full(8, 21.0)
    t = bootstrap(per)
    best = best_methods(t)
    assert best["stlpips"] == "encoding" and best["psnr"] == "mse"
    c = compact_table(t)
    assert list(c.columns) == ["bicubic", "mse", "encoding"] and len(c) == len(JUDGES)
    assert c.loc["ST-LPIPS \u2193", "encoding"] == "0.100 [0.100, 0.100] *" and not c.loc["ST-LPIPS \u2193", "mse"].endswith("*")
    assert c.loc["PSNR dB \u2191", "mse"] == "21.00 [21.00, 21.00] *"
