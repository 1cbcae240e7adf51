"""aeutils.device.pick_device: the one place the compute device is chosen."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aeutils.device import available_devices, pick_device
from aeutils.errors import DeviceError

ROOT = Path(__file__).resolve().parent.parent


def test_explicit_and_env_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSCOPY_DEVICE", raising=False)
    assert pick_device("cpu", quiet=True) == torch.device("cpu")
    monkeypatch.setenv("MSCOPY_DEVICE", "cpu")
    assert pick_device(quiet=True) == torch.device("cpu")


def test_cuda_goes_to_this_ranks_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pretend a 2-GPU host under torchrun
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("MSCOPY_DEVICE", raising=False)
    assert pick_device(quiet=True) == torch.device("cuda", 1)
    assert pick_device("cuda", quiet=True) == torch.device("cuda", 1)
    assert pick_device("cuda:0", quiet=True) == torch.device("cuda", 0)  # an explicit index is kept
    with pytest.raises(DeviceError, match=r"--device cuda:2: this machine has 2 CUDA GPUs \(available here: cpu, cuda:0, cuda:1"):
        pick_device("cuda:2", quiet=True)


def test_20_5_a_missing_or_unknown_device_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here (pretended): cuda, mps, a made-up name, $MSCOPY_DEVICE: DeviceError naming it and what there is."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.delenv("MSCOPY_DEVICE", raising=False)
    assert available_devices() == ["cpu"]
    for name, problem in (("cuda", "no CUDA GPU on this machine"), ("cuda:1", "no CUDA GPU on this machine"),
                          ("mps", "no Apple MPS device on this machine"), ("banana", "not a device name"),
                          ("xpu", "no xpu device on this machine")):
        with pytest.raises(DeviceError) as exc:
            pick_device(name, quiet=True)
        assert str(exc.value) == f"--device {name}: {problem} (available here: cpu)"
    monkeypatch.setenv("MSCOPY_DEVICE", "cuda")
    with pytest.raises(DeviceError, match=r"^MSCOPY_DEVICE=cuda: no CUDA GPU on this machine \(available here: cpu\)$"):
        pick_device(quiet=True)
    assert pick_device("cpu", quiet=True) == torch.device("cpu")  # an explicit device wins over the variable


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("command", ["train", "encode"])
@pytest.mark.parametrize("how", [["--device", "cuda"], ["--device", "banana"], ["MSCOPY_DEVICE=cuda"]])
def test_20_5_cli_without_the_device_says_so_in_one_line(command: str, how: list[str], tmp_path: Path) -> None:
    """`train` and `encode` asked for a device this machine lacks: exit 2, one error line, no traceback, nothing written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    flags = how if how[0].startswith("--") else []
    if not flags:
        env["MSCOPY_DEVICE"] = how[0].split("=", 1)[1]
    out = tmp_path / "out"
    if command == "train":
        args = ["train", str(tmp_path / "patches"), "--out", str(out), "--no-progress"]
    else:
        args = ["encode", str(ROOT / "data" / "sample" / "CMU-1-Small-Region.svs"), "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "aeutils", *args, *flags], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    asked = " ".join(flags) if flags else how[0]
    problem = "not a device name" if "banana" in asked else "no CUDA GPU on this machine"
    assert proc.stderr.strip().splitlines() == [f"error: {asked}: {problem} (available here: cpu)"]
    assert not out.exists()
