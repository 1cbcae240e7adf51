"""One optimisation step: what it minimises (:class:`ReconstructionLoss`), how it runs
(:func:`make_train_step`: channels_last, mixed precision, the NaN check before the weights change,
the DDP-averaged loss) and which of those speed options is fastest here (:func:`choose_speed`)."""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from aeutils.errors import TrainingError
from aeutils.losses.reconstruction import ReconstructionLoss
from aeutils.speed import Choice, copy_for, training_choice

__all__ = ["ReconstructionLoss", "amp_dtype_for", "make_train_step", "choose_speed"]


def amp_dtype_for(device: torch.device) -> torch.dtype:
    """bf16 where the device supports it (CPU, recent GPUs), else fp16 (older GPUs, MPS)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16


def _finite_or_raise(loss: torch.Tensor, where: str = "") -> float:
    value = float(loss.item())
    if not math.isfinite(value):
        raise TrainingError(f"non-finite training loss ({value}){where}")
    return value


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any],
    device: torch.device,
    *,
    channels_last: bool = True,
    amp: bool | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: "torch.amp.GradScaler | None" = None,
    check_finite: bool = True,
    reduce: bool | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``step(batch) -> loss`` doing one optimisation step on an Nx3xHxW batch in [0, 1].

    ``model`` should already be on ``device`` (and in channels_last if ``channels_last``); the
    batch is moved there (non-blocking) and converted. ``amp`` (default: on for CUDA only) runs
    the forward pass under autocast with ``amp_dtype`` (default :func:`amp_dtype_for`); fp16 needs a
    ``scaler``. ``loss_fn`` returns a scalar or ``(scalar, parts)``. With ``check_finite`` a NaN/inf
    loss raises :class:`TrainingError` *before* the weights change (under DDP the loss is averaged
    over ranks first, so every rank stops together). Returns the detached loss (averaged over ranks;
    ``reduce=False``: this rank's, for a model that is not DDP-wrapped, e.g. a speed probe's copy).
    """
    amp = (device.type == "cuda") if amp is None else bool(amp)
    dtype = amp_dtype or amp_dtype_for(device)
    ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if reduce is not None:
        ddp = ddp and reduce

    def step(batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            y = model(x)
        out = loss_fn(y, x)
        loss = out[0] if isinstance(out, tuple) else out
        reported = loss.detach()
        if ddp:
            reported = reported.clone()
            dist.all_reduce(reported)
            reported /= dist.get_world_size()
        if check_finite:
            _finite_or_raise(reported)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return reported

    return step


def choose_speed(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any],
    batch_shape: Sequence[int],
    device: torch.device,
    *,
    channels_last: bool | None = None,
    amp: bool | None = None,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    expected_steps: int | None = None,
    time_budget: float | None = None,
    force: str | None = None,
    verbose: bool = True,
) -> Choice:
    """The speed options (:class:`aeutils.speed.Choice`) for training ``model`` with ``loss_fn`` and
    AdamW on batches of ``batch_shape`` (N, 3, crop, crop) on ``device``: on the CPU measured with
    :func:`aeutils.speed.training_choice` on copies of the model (its weights, and the global RNGs,
    are untouched), each candidate running this module's real step (:func:`make_train_step`).
    ``channels_last``/``amp`` True/False force an option; ``expected_steps``/``time_budget`` (seconds)
    let the probe skip a run too short to pay for it. On CUDA: channels_last + autocast, no probe."""

    def make_step(choice: Choice) -> Callable[[torch.Tensor], torch.Tensor]:
        m = copy_for(model, choice).to(device).train()
        opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=weight_decay)
        return make_train_step(m, opt, loss_fn, device, channels_last=choice.channels_last, amp=choice.amp,
                               check_finite=False, reduce=False)

    return training_choice(
        make_step, batch_shape, device, channels_last=channels_last, amp=amp, expected_steps=expected_steps,
        time_budget=time_budget, force=force, verbose=verbose,
    )
