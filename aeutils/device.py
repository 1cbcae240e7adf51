"""Pick the compute device once: CUDA > MPS > CPU."""
from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch


@lru_cache(maxsize=None)
def _announce(text: str) -> None:
    print(text, flush=True)


def pick_device(prefer: str | None = None, *, quiet: bool = False) -> "torch.device":
    """The device to run on: ``prefer`` if given ("cpu", "cuda", "cuda:1", "mps"), else
    ``$MSCOPY_DEVICE``, else CUDA when available, then Apple MPS, then the CPU.

    Prints the choice once per process (``quiet=True`` to not print).
    Under ``torchrun`` the CUDA device (chosen, or asked for as a bare "cuda") is ``cuda:$LOCAL_RANK``.
    """
    import torch

    name = prefer or os.environ.get("MSCOPY_DEVICE")
    if name == "cuda":  # a bare "cuda": this process's GPU (under torchrun, ranks must not share GPU 0)
        name = None if torch.cuda.is_available() else "cuda"
    if name is None:
        if torch.cuda.is_available():
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    device = torch.device(name)
    if not quiet:
        extra = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
        _announce(f"aeutils: using device {device}{extra}")
    return device
