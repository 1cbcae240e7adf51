"""The histology loss inside BasicSR: BasicSR's own training pipeline runs a few iterations of its SRGAN
model with ``examples/basicsr_srgan_histo.yml`` (``HistoEncodingLoss`` + ``HistoPatchDataset`` on an
extract-style folder). Skipped, saying why, where the ``[basicsr]`` extra does not import."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from patchdirs import write_patches

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "basicsr_srgan_histo.yml"

try:
    import basicsr  # noqa: F401

    WHY_NOT = ""
except Exception as exc:  # noqa: BLE001 - ImportError, or basicsr's own import failing (functional_tensor)
    WHY_NOT = f"basicsr does not import here ({type(exc).__name__}: {exc}); pip install -e '.[basicsr]'"
    print(f"tests/test_sr_basicsr.py skipped: {WHY_NOT}")

pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "basicsr imports")


def test_registered_loss_and_dataset_follow_basicsr_conventions(tmp_path: Path) -> None:
    from basicsr.utils.registry import DATASET_REGISTRY, LOSS_REGISTRY

    import aeutils.sr.basicsr_plugin  # noqa: F401 - registers

    loss = LOSS_REGISTRY.get("HistoEncodingLoss")(perceptual_weight=2.0)
    x, gt = torch.rand(2, 3, 32, 32, requires_grad=True), torch.rand(2, 3, 32, 32)
    percep, style = loss(x, gt)
    assert style is None and percep.ndim == 0 and percep.item() > 0
    percep.backward()
    assert x.grad is not None
    assert "PerceptualLoss" in LOSS_REGISTRY  # BasicSR's own is still there: no clash
    patches = write_patches(tmp_path / "p", size=37, height=400)
    ds = DATASET_REGISTRY.get("HistoPatchDataset")({"patches": str(patches), "gt_size": 32, "phase": "train", "scale": 4})
    item = ds[0]
    assert item["gt"].shape == (3, 32, 32) and item["lq"].shape == (3, 8, 8) and item["gt_path"].endswith(".png")


def test_basicsr_trains_its_srgan_model_with_the_example_options(tmp_path: Path) -> None:
    patches = write_patches(tmp_path / "patches", size=129, height=600)
    overrides = [f"datasets:train:patches={patches}", "train:total_iter=2", "datasets:train:batch_size_per_gpu=2",
                 "datasets:train:num_worker_per_gpu=0", "logger:print_freq=1", "logger:save_checkpoint_freq=2",
                 "logger:use_tb_logger=false", "network_g:num_block=1", "network_g:num_feat=8",
                 "network_d:num_feat=8", "num_gpu=0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "aeutils.sr.basicsr_plugin", "-opt", str(EXAMPLE),
                           "--force_yml", *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / "experiments" / "HistoSRGAN_x4"
    assert (exp / "models" / "net_g_2.pth").is_file() and (exp / "models" / "net_d_2.pth").is_file()
    log = next(exp.glob("train_*.log")).read_text()
    assert "l_g_percep" in log and "l_g_gan" in log and "HistoEncodingLoss" in log
