"""Pick the compute device once: CUDA > MPS > CPU; a device asked for that this machine lacks is one
:class:`~aeutils.errors.DeviceError` line naming it and what is available."""
from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

from aeutils.errors import DeviceError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: environment variable read when no device is given
DEVICE_ENV = "MSCOPY_DEVICE"


@lru_cache(maxsize=None)
def _announce(text: str) -> None:
    print(text, flush=True)


def available_devices() -> list[str]:
    """The devices this process can use, e.g. ``["cpu"]``, ``["cpu", "cuda:0", "cuda:1"]`` or ``["cpu", "mps"]``."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


def _mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(prefer: str | None = None, *, quiet: bool = False) -> "torch.device":
    """The device to run on: ``prefer`` if given ("cpu", "cuda", "cuda:1", "mps"), else
    ``$MSCOPY_DEVICE``, else CUDA when available, then Apple MPS, then the CPU.

    Prints the choice once per process (``quiet=True`` to not print).
    Under ``torchrun`` the CUDA device (chosen, or asked for as a bare "cuda") is ``cuda:$LOCAL_RANK``.
    Raises :class:`~aeutils.errors.DeviceError` (one line: the device, where it was asked for, and
    :func:`available_devices`) for an unknown device or one this machine does not have.
    """
    import torch

    name = prefer or os.environ.get(DEVICE_ENV) or None
    asked = f"--device {prefer}" if prefer else f"{DEVICE_ENV}={name}"
    if name is not None:
        name = name.strip()
    if name == "cuda" and torch.cuda.is_available():  # a bare "cuda": this process's GPU (torchrun ranks must not share GPU 0)
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    if name is None:
        if torch.cuda.is_available():
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        elif _mps_available():
            name = "mps"
        else:
            name = "cpu"
    device = _checked(name, asked)
    if not quiet:
        extra = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
        _announce(f"aeutils: using device {device}{extra}")
    return device


def _checked(name: str, asked: str) -> "torch.device":
    """``torch.device(name)`` if this machine has it, else a DeviceError naming ``asked`` and what is available."""
    import torch

    have = ", ".join(available_devices())
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"{asked}: not a device name (available here: {have})") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise DeviceError(f"{asked}: no CUDA GPU on this machine (available here: {have})")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"{asked}: this machine has {count} CUDA GPU{'s' if count > 1 else ''} (available here: {have})")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(f"{asked}: no Apple MPS device on this machine (available here: {have})")
        return device
    backend = getattr(torch, device.type, None)  # e.g. torch.xpu
    if backend is None or not callable(getattr(backend, "is_available", None)) or not backend.is_available():
        raise DeviceError(f"{asked}: no {device.type} device on this machine (available here: {have})")
    return device
