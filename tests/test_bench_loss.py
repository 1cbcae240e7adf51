"""Smoke runs of the loss benchmarks, as a user would start them (subprocesses, --smoke)."""
from __future__ import annotations

import os
import re
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


def test_loss_cost_smoke(checkpoint):
    out = _run("loss_cost.py", "--checkpoint", str(checkpoint))
    ratio = re.search(r"ratio EncodingLoss / VGGContentLoss = ([0-9.]+)", out)
    assert ratio and float(ratio.group(1)) > 0, out
    assert "conv GMACs per image" in out and "VGGContentLoss" in out


def test_loss_sensitivity_cli_runs(checkpoint):
    """The script as a user starts it (its numbers are checked as data in test_bench_sensitivity.py;
    nothing else runs its main()): exit 0 and the report of the model it was given."""
    out = _run("loss_sensitivity.py", "--checkpoint", str(checkpoint))
    assert out.startswith(f"model: {checkpoint}"), out[:500]
