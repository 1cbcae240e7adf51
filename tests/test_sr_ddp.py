"""``sr train`` under torchrun: 2 CPU processes (gloo) train both phases; rank 0 alone writes the run."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from patchdirs import write_patches

from aeutils.sr.checkpoint import load_generator

ROOT = Path(__file__).resolve().parent.parent


def test_torchrun_two_cpu_ranks(tmp_path: Path) -> None:
    patches = write_patches(tmp_path / "patches", size=37, height=400)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MSCOPY_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "aeutils",
           "sr", "train", str(patches), "--out", str(run), "--preset", "tiny", "--hr-size", "32", "--batch-size", "2",
           "--pretrain-steps", "2", "--gan-steps", "2", "--val-every", "2", "--val-limit", "2", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("done (done): 4 steps") == 1  # rank 0 only
    with open(run / "log.csv") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["2", "4"]
    ck = load_generator(run / "last.pt")
    assert ck.meta["train_args"]["world_size"] == 2 and ck.train_state["step"] == 4
