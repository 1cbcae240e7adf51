"""Smoke runs of the loss benchmarks: their numbers as data (in process), the CLI as a user starts it (--smoke)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aeutils.checkpoint import save_checkpoint
from aeutils.model import Autoencoder, AutoencoderConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small random autoencoder, so the smoke runs do not depend on the shipped file."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("bench") / "ae.pt", Autoencoder(AutoencoderConfig(widths=(16, 16, 8), n_blocks=1)))


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--smoke", "--threads", "1", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_loss_cost_smoke_returns_checked_numbers(checkpoint):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import loss_cost
    finally:
        sys.path.remove(str(ROOT / "bench"))
    r = loss_cost.measure(["--smoke", "--checkpoint", str(checkpoint), "--device", "cpu"])
    med, ratios, gmacs = r["median_s"], r["ratios"], r["gmacs"]
    assert {"EncodingLoss", "VGGContentLoss"} <= set(med) and all(v > 0 for v in med.values())
    assert ratios["EncodingLoss / VGGContentLoss"] == med["EncodingLoss"] / med["VGGContentLoss"]
    # the small random checkpoint does far fewer convolutions than VGG19 up to relu3_1
    assert 0 < gmacs["EncodingLoss"] < gmacs["VGGContentLoss"]
    assert r["device"] == "cpu" and r["cpu"]


def test_loss_sensitivity_cli_runs(checkpoint):
    """The script as a user starts it (its numbers are checked as data in test_bench_sensitivity.py;
    nothing else runs its main()): exit 0 and the report of the model it was given."""
    out = _run("loss_sensitivity.py", "--checkpoint", str(checkpoint))
    assert out.startswith(f"model: {checkpoint}"), out[:500]
