"""The train command under torchrun: 2 CPU processes (gloo backend) end with identical weights."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

from patchdirs import write_patches

from aeutils.checkpoint import load_checkpoint, weights_digest

ROOT = Path(__file__).resolve().parent.parent

#: the train command with one callback: at the end each rank writes the sha256 of its weights
WORKER = """
import argparse, sys
from aeutils.checkpoint import weights_digest
from aeutils.io import atomic_write_text
from aeutils.training import add_cli_arguments, config_from_args, train

parser = argparse.ArgumentParser()
add_cli_arguments(parser)
args = parser.parse_args(sys.argv[1:])

def digest(event):
    if event.kind == "end":
        state = {k: v.detach().cpu().contiguous() for k, v in event.trainer.module.state_dict().items()}
        atomic_write_text(event.out_dir / f"rank{event.rank}.digest", weights_digest(state) + "\\n")

train(args.patches_dir, args.out, config_from_args(args), callbacks=[digest])
"""


def test_torchrun_two_cpu_ranks_end_identical(tmp_path: Path) -> None:
    patches = write_patches(tmp_path / "patches", size=37, seed=1, xs=(0, 20))
    run = tmp_path / "run"
    worker = tmp_path / "train_with_digest.py"
    worker.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MSCOPY_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(worker), str(patches), "--out", str(run), "--epochs", "2", "--batch-size", "3",
        "--crop", "33", "--config", "n_blocks=1", "widths=8,8,4", "--workers", "0", "--no-progress",
        "--val-limit", "4",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    d0, d1 = (run / "rank0.digest").read_text().strip(), (run / "rank1.digest").read_text().strip()
    assert d0 == d1  # parameters all-reduced, BN statistics shared from rank 0
    # only rank 0 wrote the run: one log row per epoch, checkpoints holding those same weights
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    ck = load_checkpoint(run / "last.pt")
    assert ck.meta["train_args"]["world_size"] == 2
    state = {k: v.contiguous() for k, v in ck.model.state_dict().items()}
    assert weights_digest(state) == d0
    # 2 ranks x batch 3: each optimiser step saw 6 patches
    assert int(rows[-1]["step"]) == 2 * (ck.meta["train_args"]["n_train"] // 6)
    assert torch.isfinite(torch.tensor(float(rows[-1]["val_psnr"])))


def test_20_2_torchrun_time_budget_stop_is_rank0s_and_resumes_inside_the_epoch(tmp_path: Path) -> None:
    """Each rank measures its own clock; rank 0's decides a --time-budget stop for both (here rank 1's
    clock is frozen, so it alone would never stop and would wait forever in the next step's all-reduce).
    The stop inside epoch 1 keeps the position, and the same command without the budget ends the run
    with an uninterrupted run's step count and one log row per epoch."""
    patches = write_patches(tmp_path / "patches", size=37, seed=1, xs=(0, 20))
    run = tmp_path / "run"
    worker = tmp_path / "train_with_digest.py"
    worker.write_text(
        "import os, types\n"
        "import aeutils.training.loop as loop\n"
        "if os.environ.get('RANK') == '1' and os.environ.get('FREEZE_RANK1_CLOCK'):\n"
        "    loop.time = types.SimpleNamespace(perf_counter=lambda: 0.0)\n" + WORKER
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MSCOPY_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(worker), str(patches), "--out", str(run), "--epochs", "2", "--batch-size", "3",
        "--crop", "33", "--config", "n_blocks=1", "widths=8,8,4", "--workers", "0", "--no-progress",
        "--val-limit", "4",
    ]
    proc = subprocess.run([*cmd, "--time-budget", "0.000001"], env={**env, "FREEZE_RANK1_CLOCK": "1"},
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (run / "rank0.digest").read_text() == (run / "rank1.digest").read_text()
    ck = load_checkpoint(run / "last.pt")
    per_epoch = ck.meta["train_args"]["n_train"] // 6
    assert per_epoch >= 2 and ck.train_state["global_step"] == 1 and ck.train_state["in_epoch"]["steps"] == 1
    assert ck.meta["epoch"] == 0 and not (run / "log.csv").exists()  # a partial epoch is not logged
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (run / "rank0.digest").read_text() == (run / "rank1.digest").read_text()
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"] and int(rows[-1]["step"]) == 2 * per_epoch
