"""Several processes under ``torchrun``: this rank's device, the process group (nccl for CUDA
devices, gloo otherwise), and the few things the ranks share (rank 0's batch-norm statistics, a value
rank 0 computed). One process (``WORLD_SIZE`` unset or 1) needs none of it."""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from aeutils.device import pick_device

__all__ = ["rank_device", "setup_process_group", "share_buffers", "from_rank0", "rank0_says"]


def rank_device(device: str | torch.device | None) -> torch.device:
    """The device of this process: :func:`pick_device` (which maps a bare "cuda" to
    ``cuda:$LOCAL_RANK``), announced by rank 0 only."""
    if isinstance(device, torch.device):
        return device
    return pick_device(device, quiet=int(os.environ.get("RANK", "0")) != 0)


def setup_process_group(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call initialised the process group). The backend follows
    this rank's ``device``: nccl for a CUDA device, gloo otherwise (also on a GPU host run with
    ``--device cpu``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), True


def share_buffers(module: nn.Module) -> None:
    """Make rank 0's buffers every rank's (DDP all-reduces gradients but keeps batch-norm running
    statistics per rank)."""
    for b in module.buffers():
        dist.broadcast(b, 0)


def from_rank0(compute: Callable[[], Any], rank: int) -> Any:
    """``compute()`` run on rank 0 only, its (picklable) result broadcast to every rank."""
    box: list[Any] = [compute() if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank0_says(flag: bool, device: torch.device, world: int) -> bool:
    """Rank 0's ``flag`` on every rank (one broadcast of one number; ``flag`` itself with one
    process), so that a decision each rank could make differently (a time budget measured by each
    clock) is the same everywhere and no rank waits in a collective the others have left."""
    if world <= 1 or not dist.is_initialized():
        return flag
    box = torch.tensor([int(flag)], device=device)
    dist.broadcast(box, 0)
    return bool(box.item())
