"""Smoke run of bench/loss_sensitivity.py: it returns its numbers as data (a SensitivityBench) and the
printed report is made from them; the numbers are checked, not the prose."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from aeutils.checkpoint import save_checkpoint
from aeutils.model import Autoencoder, AutoencoderConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)  # a small random autoencoder (not the control's seed 0): no dependence on the shipped file
    return save_checkpoint(tmp_path_factory.mktemp("sens") / "ae.pt", Autoencoder(AutoencoderConfig(widths=(16, 16, 8), n_blocks=1)))


def test_loss_sensitivity_returns_its_numbers(checkpoint: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import loss_sensitivity

    bench = loss_sensitivity.run_bench(str(checkpoint), n=2, size=33, seed=0, batch=2)
    res, summ = bench.result, bench.summary
    assert res.n_patches == 2 and res.size == 33 and bench.model == str(checkpoint) and bench.seconds > 0
    assert {"pixel MSE", "trained", "random"} <= set(summ) and set(loss_sensitivity.SHOWN) <= set(summ)
    kinds = res.kinds
    assert {"blur", "shift", "stain"} <= set(kinds) and kinds["blur"] == "detail" and kinds["shift"] == "nuisance"
    for loss, row in summ.items():
        assert 0.0 <= row["auc"] <= 1.0 and row["ratio"] > 0 and math.isfinite(row["ratio"]), loss
        # the summary is what the responses say: the ratio is the detail/nuisance geometric-mean ratio
        det = [v.mean() for k, v in res.per_image[loss].items() if kinds[k[0]] == "detail"]
        nui = [v.mean() for k, v in res.per_image[loss].items() if kinds[k[0]] == "nuisance"]
        root = 1.0 / res.powers.get(loss, 1)
        geo = lambda xs: math.exp(sum(math.log(x + 1e-30) for x in xs) / len(xs))  # noqa: E731
        assert row["ratio"] == pytest.approx((geo(det) / geo(nui)) ** root, rel=1e-6), loss
    # pixel MSE grows with the blur's sigma for every patch (a check the numbers are responses, not noise)
    assert summ["pixel MSE"]["spearman:blur"] == pytest.approx(1.0)
    assert bench.cpu["model"] and isinstance(bench.cpu["avx512_bf16"], bool)
    text = bench.report()
    assert text.startswith(f"model: {checkpoint}") and f"CPU: {bench.cpu['model']}" in text
    assert text.endswith(bench.verdict())
