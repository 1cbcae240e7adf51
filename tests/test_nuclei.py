"""aeutils.metrics.nuclei: the nuclei judge finds drawn nuclei, matches them object by object, and ranks
degradations as a reader would (on the bundled slides' validation patches, where its parameters were fixed)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aeutils.metrics import nuclei as N


def _discs(centres, radius: int = 6, side: int = 64) -> torch.Tensor:
    """A pink (eosin-like) 3xSxS image with dark purple (haematoxylin-like) discs at ``centres``."""
    yy, xx = np.mgrid[:side, :side]
    img = np.empty((side, side, 3))
    img[:] = (0.93, 0.72, 0.85)
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = (0.30, 0.20, 0.55)
    return torch.from_numpy(img).permute(2, 0, 1).float()


def test_segments_each_drawn_nucleus_and_splits_touching_ones():
    img = _discs([(12, 12), (40, 15), (30, 45)])
    lab = N.segment_nuclei(img, N.hr_threshold(img))
    assert lab.max() == 3
    touching = _discs([(32, 24), (32, 35)], radius=6)  # two discs overlapping by ~1 px
    assert N.segment_nuclei(touching, N.hr_threshold(touching)).max() == 2


def test_match_counts_only_pairs_at_iou_half():
    ref = np.zeros((20, 20), np.int32)
    ref[2:8, 2:8], ref[10:16, 10:16] = 1, 2
    test = np.zeros_like(ref)
    test[2:8, 3:9] = 1  # IoU 30/42 = 0.71 with object 1
    test[10:16, 14:20] = 2  # IoU 12/60 = 0.2 with object 2
    tp, a_r, a_t = N.match_nuclei(ref, test)
    assert tp == 1 and list(a_r) == [36, 36] and list(a_t) == [36, 36]


def test_scores_missing_and_extra_nuclei():
    hr = _discs([(12, 12), (40, 15), (30, 45), (50, 50)])[None]
    sr = _discs([(12, 12), (40, 15)])[None]  # two of four nuclei lost
    s = N.nuclei_scores(sr, hr)
    assert s["nuclei_f1"][0] == pytest.approx(2 * 2 / 6) and s["nuclei_count"][0] == pytest.approx(0.5)
    assert s["nuclei_area"][0] == pytest.approx(0.0, abs=0.02)  # the found ones have the right size
    blank = _discs([])[None]
    assert N.nuclei_scores(blank, blank)["nuclei_f1"][0] == 1.0  # nothing to find, nothing found


@pytest.fixture(scope="module")
def val_pairs():
    from aeutils.sr.bench import bundled

    return N.sanity_pairs(bundled("val", 6, 128))


def test_hr_against_itself_is_perfect(val_pairs):
    s = N.nuclei_scores(*val_pairs["self"])
    assert (s["nuclei_f1"] == 1).all() and (s["nuclei_count"] == 0).all() and (s["nuclei_area"] == 0).all()


def test_ranks_degradations_and_forgives_a_pixel_of_shift(val_pairs):
    f1 = {k: float(N.nuclei_scores(*val_pairs[k])["nuclei_f1"].mean()) for k in val_pairs}
    assert f1["x2_bicubic"] > f1["x4_bicubic"] > f1["x4_bilinear"]
    assert f1["shift1"] >= 0.95 and f1["shift1"] > f1["x2_bicubic"]


def test_judges_report_the_nuclei_columns():
    from aeutils.metrics.judges import JUDGES, LOWER_IS_BETTER

    assert set(N.NUCLEI_JUDGES) <= set(JUDGES) and {"nuclei_count", "nuclei_area"} <= LOWER_IS_BETTER


def test_bench_smoke_prints_the_shipped_choice(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import nuclei_judge

    best = nuclei_judge.main(["--smoke"])
    assert (best["sigma"], best["min_area"], best["min_distance"]) == (N.SIGMA, N.MIN_AREA, N.MIN_DISTANCE)
    assert "= aeutils.metrics.nuclei.PARAMS" in capsys.readouterr().out


def test_figure_outlines_each_methods_nuclei():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hr = _discs([(20, 20), (44, 40)])
    fig = N.nuclei_figure({"hr": [hr], "blank": [_discs([])]}, side=64)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["hr\n2 nuclei, F1 1.00", "blank\n0 nuclei, F1 0.00"]
    plt.close(fig)
