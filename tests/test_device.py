"""aeutils.device.pick_device: the one place the compute device is chosen."""
from __future__ import annotations

import pytest
import torch

from aeutils.device import pick_device


def test_explicit_and_env_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSCOPY_DEVICE", raising=False)
    assert pick_device("cpu", quiet=True) == torch.device("cpu")
    monkeypatch.setenv("MSCOPY_DEVICE", "cpu")
    assert pick_device(quiet=True) == torch.device("cpu")


def test_cuda_goes_to_this_ranks_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pretend a GPU host under torchrun
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("MSCOPY_DEVICE", raising=False)
    assert pick_device(quiet=True) == torch.device("cuda", 1)
    assert pick_device("cuda", quiet=True) == torch.device("cuda", 1)
    assert pick_device("cuda:0", quiet=True) == torch.device("cuda", 0)  # an explicit index is kept
