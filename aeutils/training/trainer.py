"""The :class:`Trainer`: model + AdamW + grad scaler + LR schedule on one device (DDP-wrapped under
``torchrun``), ``.step(batch)``, ``.evaluate(...)`` and a ``.state_dict()`` for exact resume."""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import nn

from aeutils.device import pick_device
from aeutils.errors import TrainingError
from aeutils.metrics import psnr, ssim
from aeutils.model import Autoencoder
from aeutils.speed import Choice, candidate_name
from aeutils.training.rng import rng_state, set_rng_state
from aeutils.training.step import ReconstructionLoss, amp_dtype_for, make_train_step

__all__ = ["Trainer"]


class _Schedule:
    """LR factor for step s: linear warmup over ``warmup`` steps, then cosine to 0.02 at ``total``
    (or constant)."""

    def __init__(self, total: int, warmup: int, kind: str) -> None:
        if kind not in ("cosine", "constant"):
            raise TrainingError(f"schedule must be 'cosine' or 'constant', got {kind!r}")
        self.total, self.warmup, self.kind = max(1, total), max(0, warmup), kind

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        t = min(1.0, (s - self.warmup) / max(1, self.total - self.warmup))
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * t))


class Trainer:
    """Model + AdamW + grad scaler + LR schedule on one device, with an exact-resume state.

    Args:
        model: an :class:`Autoencoder` (moved to ``device``, channels_last if asked, DDP-wrapped
            when a process group with several ranks is initialised).
        lr, weight_decay: AdamW settings. ``total_steps``/``warmup_steps``/``schedule``: the LR
            schedule ("cosine" after a linear warmup, or "constant").
        loss: a :class:`ReconstructionLoss` (default MSE).
        device: default :func:`aeutils.device.pick_device`.
        channels_last, amp, amp_dtype: as in :func:`make_train_step`; None (default): on for CUDA
            only. ``speed``: a :func:`choose_speed` decision, used for whichever of
            ``channels_last``/``amp`` is None (what :func:`train` does; kept as ``.speed``).

    ``step(batch)`` does one optimisation step and returns the detached loss; ``evaluate(batches)``
    returns mean PSNR/SSIM/loss; ``state_dict()``/``load_state_dict()`` cover optimiser, scaler,
    scheduler, step count and RNG states.
    """

    def __init__(
        self,
        model: Autoencoder,
        *,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        loss: ReconstructionLoss | None = None,
        device: torch.device | str | None = None,
        channels_last: bool | None = None,
        amp: bool | None = None,
        amp_dtype: torch.dtype | None = None,
        total_steps: int = 1000,
        warmup_steps: int = 0,
        schedule: str = "cosine",
        speed: Choice | None = None,
    ) -> None:
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        on = self.device.type == "cuda"
        explicit = channels_last is not None or amp is not None
        if speed is not None:
            channels_last = speed.channels_last if channels_last is None else channels_last
            amp = speed.amp if amp is None else amp
        self.channels_last = channels_last = on if channels_last is None else bool(channels_last)
        self.amp = on if amp is None else bool(amp)
        actual = candidate_name(self.channels_last, self.amp)
        self.speed = speed if speed is not None and speed.name == actual else Choice(
            actual, "forced" if explicit else "device default")
        self.amp_dtype = amp_dtype or amp_dtype_for(self.device)
        model.to(self.device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.module = model
        self.ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model: nn.Module = DistributedDataParallel(model, device_ids=ids)
        else:
            self.model = model
        self.loss_fn = (loss or ReconstructionLoss()).to(self.device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        use_scaler = self.amp and self.amp_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.schedule = _Schedule(total_steps, warmup_steps, schedule)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self.schedule(s))
        self.global_step = 0
        self._step = make_train_step(
            self.model, self.optimizer, self.loss_fn, self.device, channels_last=channels_last,
            amp=self.amp, amp_dtype=self.amp_dtype, scaler=self.scaler,
        )

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        """One optimisation step on an Nx3xHxW batch in [0, 1]; returns the detached loss.
        Raises TrainingError (weights unchanged) on a NaN/inf loss."""
        self.model.train()
        loss = self._step(batch)
        self.scheduler.step()
        self.global_step += 1
        return loss

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode ``(reconstruction, input)`` of an Nx3xHxW batch, both on this device (the
        reconstruction float32, clamped to [0, 1])."""
        self.module.eval()
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            y = self.module(x)
        return y.float().clamp(0, 1), x

    @torch.no_grad()
    def evaluate(self, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        """Mean ``psnr`` (dB), ``ssim`` and ``loss`` over batches of Nx3xHxW images (eval mode)."""
        ps, ss, ls, n = [], [], [], 0
        for batch in batches:
            y, x = self.reconstruct(batch)
            ps.append(psnr(y, x).cpu())
            ss.append(ssim(y, x).cpu())
            ls.append(float(self.loss_fn(y, x.float())[0]) * x.shape[0])
            n += x.shape[0]
        if not n:
            return {"psnr": float("nan"), "ssim": float("nan"), "loss": float("nan")}
        return {"psnr": float(torch.cat(ps).mean()), "ssim": float(torch.cat(ss).mean()), "loss": sum(ls) / n}

    def state_dict(self) -> dict[str, Any]:
        """Training state as plain data + tensors (for ``save_checkpoint(train_state=...)``)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
            "global_step": self.global_step,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the model weights are loaded separately)."""
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        sched = dict(state["scheduler"])
        sched["lr_lambdas"] = [None]
        self.scheduler.load_state_dict(sched)
        self.global_step = int(state["global_step"])
        if "rng" in state:
            set_rng_state(state["rng"])
