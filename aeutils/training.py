"""Train the autoencoder on extracted patches: CPU, one GPU, or several GPUs under ``torchrun``.

    python -m aeutils train PATCHES_DIR --out RUN_DIR [--epochs 10] [--batch-size 16] [--crop 181]
        [--lr 2e-3] [--config n_blocks=2 widths=32,32,8] [--ssim 0.2] [--time-budget 45m] [--resume]
    # rerunning the same command continues the run (after Ctrl-C or a --time-budget stop);
    # --resume continues it with changed settings (e.g. more --epochs)
    torchrun --nproc_per_node 4 -m aeutils train PATCHES_DIR --out RUN_DIR ...   # DDP

The same as a function: :func:`train`. The pieces are reusable: :class:`ReconstructionLoss`
(MSE + optional L1 / SSIM / VGG terms), :func:`make_train_step` (one optimisation step with
channels_last / mixed precision) and :class:`Trainer` (model + optimiser + scaler + LR schedule,
``.step(batch)``, ``.evaluate(...)``, ``.state_dict()`` for exact resume). ``callbacks`` of
:func:`train` see every epoch (:class:`TrainEvent`). Every patch is checked before the first epoch
(validation ones decoded, training ones structure-checked), so a corrupt file costs no training.

The knobs live in one :class:`TrainConfig` (validated when it is made; the CLI builds the same
object from its flags): ``train(patches, out, TrainConfig(epochs=130, ...))``, or keywords
``train(patches, out, epochs=130)``. Run folder: ``config.json`` (the TrainConfig and the patch
folder: the run is reproducible from it), ``last.pt`` and ``best.pt`` (atomic :mod:`aeutils.checkpoint` files with the training
state: optimiser, grad scaler, LR scheduler, epoch, step, torch/numpy/python RNG), ``log.csv`` (one
row per epoch, rewritten atomically), ``tensorboard/`` (``tensorboard --logdir RUN_DIR``).

Speed: on CUDA, bf16 autocast (fp16 + GradScaler where bf16 is unsupported), channels_last,
pinned memory and DataLoader workers. On the CPU the right options flip between machines (channels_last
+ bf16 autocast 2.7x faster than fp32 on a Xeon with AMX-BF16; 0.74x and 0.05x on an AVX2-only EPYC),
so ``--channels-last auto --amp auto`` (the default) decides by measurement once per run
(:func:`choose_speed`, :mod:`aeutils.speed`): a few timed steps of fp32, channels_last, bf16 and both
on the run's own model, crop and batch, one printed line, the choice stored in the checkpoints'
``train_args["speed"]`` and the log's ``speed`` column and reused on ``--resume``. The probe is
skipped (fp32) where it would cost more than 5 % of the run. ``on``/``off`` force an option
(``$MSCOPY_CPU_SPEED`` forces a candidate). bf16 autocast keeps fp32 master weights. On a shared or
small CPU, one thread per process (``OMP_NUM_THREADS=1``) can be much faster than contending threads. Exactness: with ``workers=0`` on the CPU, ``--resume`` after an epoch reproduces
an uninterrupted run bit for bit (shuffling is seeded per epoch, RNG states are restored). A
``--max-steps`` / ``--time-budget`` stop inside an epoch counts that epoch as finished.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import random
import re
import time
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from aeutils.checkpoint import load_checkpoint, save_checkpoint
from aeutils.data import PatchDataset, read_image
from aeutils.device import pick_device
from aeutils.errors import TrainingError
from aeutils.io import atomic_write_text
from aeutils.metrics import psnr, ssim
from aeutils.model import Autoencoder, AutoencoderConfig, nearest_valid_sizes, unknown_fields
from aeutils.patches import default_workers
from aeutils.speed import Choice, candidate_name, copy_for, training_choice

__all__ = [
    "TrainConfig",
    "TrainEvent",
    "ReconstructionLoss",
    "make_train_step",
    "choose_speed",
    "Trainer",
    "TrainResult",
    "train",
    "parse_config",
    "parse_duration",
    "config_from_args",
    "read_run_config",
    "find_runs",
    "rng_state",
    "set_rng_state",
    "add_cli_arguments",
    "run_cli",
]

LOG_NAME = "log.csv"
CONFIG_NAME = "config.json"


# --------------------------------------------------------------------------- loss


class ReconstructionLoss(nn.Module):
    """Weighted sum of reconstruction terms between ``pred`` and ``target`` (Nx3xHxW RGB in [0, 1]).

    ``mse`` (default 1), ``l1``, ``ssim`` (``1 - SSIM``, torchmetrics, Gaussian 11x11 window) and
    ``vgg`` (ImageNet-VGG19 content term, :class:`aeutils.loss.VGGContentLoss`, only from the
    local ``vgg_weights`` file). Every term passes gradients to ``pred``; only the target side of
    the VGG term is computed without gradients. Terms are computed in float32.

    ``forward`` returns ``(total, parts)``: a scalar tensor and a dict of the unweighted terms.
    """

    def __init__(
        self, mse: float = 1.0, l1: float = 0.0, ssim: float = 0.0, vgg: float = 0.0, vgg_weights: str | os.PathLike[str] | None = None
    ) -> None:
        super().__init__()
        self.weights = {k: float(v) for k, v in (("mse", mse), ("l1", l1), ("ssim", ssim), ("vgg", vgg)) if v}
        if any(v < 0 for v in self.weights.values()):
            raise TrainingError(f"loss weights must be >= 0, got {self.weights}")
        if not self.weights:
            raise TrainingError("all loss weights are zero: give at least one of mse, l1, ssim, vgg")
        self.vgg: nn.Module | None = None
        if vgg:
            if vgg_weights is None:
                raise TrainingError(
                    "the VGG loss term needs a local VGG19 weights file (--vgg-weights path/to/vgg19-dcbb9e9d.pth); "
                    "nothing is downloaded"
                )
            try:
                from aeutils.loss import VGGContentLoss
            except ImportError as exc:  # pragma: no cover - the loss module ships with the package
                raise TrainingError(f"the VGG loss term needs aeutils.loss.VGGContentLoss ({exc})") from None
            self.vgg = VGGContentLoss(weights=vgg_weights)
        elif vgg_weights is not None:
            raise TrainingError("--vgg-weights given but the VGG term's weight is 0 (pass --vgg W)")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchmetrics.functional.image import structural_similarity_index_measure

        p, t = pred.float(), target.float()
        parts: dict[str, torch.Tensor] = {}
        if "mse" in self.weights:
            parts["mse"] = torch.nn.functional.mse_loss(p, t)
        if "l1" in self.weights:
            parts["l1"] = torch.nn.functional.l1_loss(p, t)
        if "ssim" in self.weights:
            parts["ssim"] = 1.0 - structural_similarity_index_measure(p, t, data_range=1.0)
        if self.vgg is not None:
            parts["vgg"] = self.vgg(p, t)  # target side runs under no_grad inside VGGContentLoss
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, parts  # type: ignore[return-value]


# --------------------------------------------------------------------------- one step


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


# --------------------------------------------------------------------------- RNG state (plain data)


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and python ``random`` RNG states as tensors and plain data
    (loadable with ``torch.load(weights_only=True)``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and python ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# --------------------------------------------------------------------------- trainer


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


# --------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    """What :func:`train` did: the run folder, checkpoints, per-epoch history (the CSV rows),
    why it stopped ("epochs", "max_steps", "time_budget", "nothing_to_do"), the best validation
    PSNR and the wall time of this call (seconds)."""

    out_dir: Path
    last: Path
    best: Path
    epochs_done: int
    global_step: int
    stopped: str
    best_psnr: float
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's row of the log."""
        return self.history[-1] if self.history else {}


def _rank_device(device: str | torch.device | None) -> torch.device:
    """The device of this process: :func:`pick_device` (which maps a bare "cuda" to
    ``cuda:$LOCAL_RANK``), announced by rank 0 only."""
    if isinstance(device, torch.device):
        return device
    return pick_device(device, quiet=int(os.environ.get("RANK", "0")) != 0)


def _dist_setup(device: torch.device) -> tuple[int, int, bool]:
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


def _default_workers(device: torch.device, world: int) -> int:
    """DataLoader workers per rank from the cores this process may use (CPU affinity, not the host's count)."""
    cpus = default_workers()
    per_rank = max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if device.type == "cuda":
        return min(8, max(1, per_rank - 1))
    return 0 if per_rank <= 2 else min(4, per_rank // 2)


def _val_crop(ds: PatchDataset, crop: int) -> int:
    """Validate on the whole patch (largest 4k+1 side that fits), so metrics are comparable across crops."""
    if not len(ds):
        return crop
    h, w = read_image(ds.records[0].path).shape[:2]
    side = min(h, w)
    return max(5, side - (side - 1) % 4)


def _read_log(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return [r for r in rows if int(r["epoch"]) <= upto_epoch]


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _write_log(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _run_speed(
    ckpt: Any, model: nn.Module, loss: nn.Module, device: torch.device, *, batch_size: int, crop: int,
    channels_last: bool | None, amp: bool | None, lr: float, weight_decay: float, remaining: int,
    time_budget: float | None, rank: int, world: int, verbose: bool,
) -> Choice:
    """This run's speed choice: a resumed run's stored one (no probe) unless an option is forced
    against it, else :func:`choose_speed` (rank 0 measures, the other ranks take its answer)."""
    if ckpt is not None:
        ta = ckpt.meta.get("train_args", {})
        stored = ta.get("speed")
        if stored is None and "channels_last" in ta:  # a run from before the probe: its flags were the choice
            stored = {"name": candidate_name(bool(ta["channels_last"]), bool(ta.get("amp"))), "source": "resumed"}
        if stored is not None:
            old = Choice.from_dict(stored)
            if (channels_last is None or channels_last == old.channels_last) and (amp is None or amp == old.amp):
                resumed = Choice(old.name, "resumed", old.rates, old.probe_seconds, old.what)
                if verbose:
                    print(resumed.describe(), flush=True)
                return resumed
    if world > 1 and dist.is_initialized():
        box: list[Any] = [None]
        if rank == 0:
            box[0] = choose_speed(
                model, loss, (batch_size, 3, crop, crop), device, channels_last=channels_last, amp=amp, lr=lr,
                weight_decay=weight_decay, expected_steps=remaining, time_budget=time_budget, verbose=verbose,
            ).to_dict()
        dist.broadcast_object_list(box, src=0)
        return Choice.from_dict(box[0])
    return choose_speed(
        model, loss, (batch_size, 3, crop, crop), device, channels_last=channels_last, amp=amp, lr=lr,
        weight_decay=weight_decay, expected_steps=remaining, time_budget=time_budget, verbose=verbose,
    )


def _val_batches(ds: Any, batch_size: int) -> Iterable[torch.Tensor]:
    for i in range(0, len(ds), batch_size):
        yield torch.stack([ds[j] for j in range(i, min(len(ds), i + batch_size))])


#: TrainConfig fields that say how long / where / how loudly a run goes, not what it trains: a run
#: folder may be continued with other values of these (``resume="auto"`` compares only the rest)
RUNTIME_FIELDS = ("resume", "device", "workers", "max_steps", "time_budget", "progress", "verbose", "log_every",
                  "print_every")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of :func:`train`, checked when made (one-line :class:`TrainingError` named by the
    CLI option). Saved as ``config.json`` in the run folder (:meth:`to_dict` / :meth:`from_dict`).

    Args:
        epochs: total epochs (also when resuming). batch_size: per process. crop: training crop
            side in pixels (4k+1; random position); validation uses the whole (4k+1) patch.
        lr, weight_decay, schedule, warmup_steps: AdamW and its LR schedule (cosine over
            ``epochs``, warmup default min(200, 5 %) of the steps).
        architecture: the model (default :class:`AutoencoderConfig` ()); a resumed run uses the
            checkpoint's and refuses a different one.
        resume: False: an existing ``last.pt`` is an error; True: continue ``out/last.pt`` (other
            settings may change, e.g. more epochs); ``"auto"``: continue if the folder holds a run
            whose ``config.json`` matches this one (all but :data:`RUNTIME_FIELDS`), start if it is
            empty, error naming the differences otherwise.
        mse, l1, ssim, vgg, vgg_weights: loss weights (:class:`ReconstructionLoss`).
        stain_jitter: HED jitter strength for training augmentation (0: off).
        device: default :func:`aeutils.device.pick_device`. workers: DataLoader processes.
        seed: initial weights, shuffling and augmentation.
        max_steps, time_budget: optional stops (total optimiser steps; seconds of this call, or a
            string "90s", "45m", "1.5h").
        val_limit: validate on at most this many patches (evenly spaced; None: all).
        channels_last, amp: speed options; True/False force one; None (default): on CUDA both on (amp:
            bf16, or fp16 + GradScaler); on the CPU measured once per run (:func:`choose_speed`,
            skipped where the probe would cost more than 5 % of the run) and reused on resume.
        log_every: TensorBoard step-loss interval (steps). progress: tqdm bars. verbose: printed
            lines (rank 0 only); print_every: an epoch line every N epochs (and the first and last;
            None: about 20 lines per run). The full log is ``log.csv`` and TensorBoard.
    """

    epochs: int = 10
    batch_size: int = 16
    crop: int = 181
    lr: float = 2e-3
    weight_decay: float = 0.0
    architecture: AutoencoderConfig | None = None
    resume: bool | str = False
    mse: float = 1.0
    l1: float = 0.0
    ssim: float = 0.0
    vgg: float = 0.0
    vgg_weights: str | None = None
    stain_jitter: float = 0.0
    device: str | None = None
    workers: int | None = None
    seed: int = 0
    max_steps: int | None = None
    time_budget: float | None = None
    val_limit: int | None = 256
    schedule: str = "cosine"
    warmup_steps: int | None = None
    channels_last: bool | None = None
    amp: bool | None = None
    log_every: int = 10
    progress: bool = True
    verbose: bool = True
    print_every: int | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen: normalise once, here
        if isinstance(self.time_budget, str):
            set_("time_budget", parse_duration(self.time_budget))
        if isinstance(self.architecture, dict):
            set_("architecture", _architecture(self.architecture))
        if isinstance(self.vgg_weights, os.PathLike):
            set_("vgg_weights", os.fspath(self.vgg_weights))
        if isinstance(self.device, torch.device):
            set_("device", str(self.device))
        self._check()

    def _check(self) -> None:
        """One-line :class:`TrainingError` (named by the CLI option) for a value the run cannot use."""
        for flag, value, kind in (
            ("--epochs", self.epochs, int), ("--batch-size", self.batch_size, int), ("--crop", self.crop, int),
            ("--seed", self.seed, int), ("--log-every", self.log_every, int),
        ):
            if isinstance(value, bool) or not isinstance(value, kind):
                raise TrainingError(f"{flag} {value!r}: expected an integer")
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainingError(f"epochs and batch size must be >= 1 (got {self.epochs}, {self.batch_size})")
        crop = self.crop
        if crop < 5 or crop % 4 != 1:
            lo, hi = nearest_valid_sizes(crop)
            near = f"{lo}, {hi}" if lo != hi else f"{lo}"
            raise TrainingError(f"--crop {crop}: training crops must be 4k+1 px, at least 5 (nearest: {near})")
        for flag, value, low in (
            ("--val-limit", self.val_limit, 0), ("--workers", self.workers, 0), ("--max-steps", self.max_steps, 1),
            ("--warmup-steps", self.warmup_steps, 0), ("--print-every", self.print_every, 1),
            ("--log-every", self.log_every, 1),
        ):
            if value is not None and value < low:
                raise TrainingError(f"{flag} {value}: must be >= {low}" + (" (0: all patches)" if flag == "--val-limit" else ""))
        for flag, fvalue, strict in (
            ("--lr", self.lr, True), ("--weight-decay", self.weight_decay, False),
            ("--stain-jitter", self.stain_jitter, False), ("--mse", self.mse, False), ("--l1", self.l1, False),
            ("--ssim", self.ssim, False), ("--vgg", self.vgg, False),
        ):
            if isinstance(fvalue, bool) or not isinstance(fvalue, (int, float)):
                raise TrainingError(f"{flag} {fvalue!r}: expected a number")
            if not math.isfinite(fvalue) or fvalue < 0 or (strict and fvalue == 0):
                raise TrainingError(f"{flag} {fvalue:g}: must be {'> 0' if strict else '>= 0'}")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise TrainingError(f"--time-budget {self.time_budget!r}: must be > 0 seconds")
        if self.schedule not in ("cosine", "constant"):
            raise TrainingError(f"--schedule {self.schedule!r}: must be 'cosine' or 'constant'")
        if self.resume not in (True, False, "auto"):
            raise TrainingError(f"resume {self.resume!r}: must be True, False or 'auto'")
        if self.architecture is not None and not isinstance(self.architecture, AutoencoderConfig):
            raise TrainingError(f"architecture: expected an AutoencoderConfig, got {type(self.architecture).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the architecture as its dict, None for the default)."""
        d = asdict(self)
        d["architecture"] = self.architecture.to_dict() if self.architecture is not None else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`TrainingError` naming them."""
        unknown = unknown_fields(cls, data)
        if unknown:
            known = sorted(f.name for f in fields(cls))
            raise TrainingError(f"unknown training settings {unknown} (known: {', '.join(known)})")
        return cls(**data)

    def recipe(self) -> dict[str, Any]:
        """What the run trains (all but :data:`RUNTIME_FIELDS`), the architecture spelled out."""
        d = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}
        d["architecture"] = (self.architecture or AutoencoderConfig()).to_dict()
        return d

    def run_name(self, prefix: str = "ae") -> str:
        """A folder name for this recipe: ``ae-<10 hex of its sha256>`` (changing any trained-on
        setting, e.g. epochs or the architecture, gives another folder; a time budget does not)."""
        import hashlib

        text = json.dumps(self.recipe(), sort_keys=True, default=list)
        return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)


def _architecture(data: dict[str, Any], where: str = "architecture") -> AutoencoderConfig:
    """An AutoencoderConfig from a dict, its values checked against the field types first (so
    ``n_blocks="abc"`` names the key and the type instead of failing deep inside)."""
    hints = typing.get_type_hints(AutoencoderConfig)
    known = {f.name for f in fields(AutoencoderConfig)}
    clean: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise TrainingError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        clean[key] = _typed(key, value, hints[key], where)
    try:
        return AutoencoderConfig.from_dict(clean)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"{where}: {exc}") from None


def _typed(key: str, value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type ``hint`` of an AutoencoderConfig field, or a TrainingError naming both."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def bad(expected: str) -> TrainingError:
        return TrainingError(f"{where}: {key}={value!r}: expected {expected}")

    if origin is tuple:
        inner = args[0]
        n = len(args) if args[-1] is not Ellipsis else None
        items = list(value) if isinstance(value, (list, tuple)) else None
        word = {int: "integers", float: "numbers"}.get(inner, inner.__name__)
        expected = f"{n if n else 'some'} comma-separated {word}"
        if items is None or (n is not None and len(items) != n):
            raise bad(expected)
        return tuple(_typed(key, v, inner, where) if not isinstance(v, (list, tuple)) else _raise(bad(expected)) for v in items)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value


def _raise(exc: BaseException) -> Any:
    raise exc


def write_run_config(out: Path, patches_dir: Path, config: TrainConfig) -> Path:
    """``out/config.json`` (atomic): the patch folder and the TrainConfig, so the run is reproducible."""
    data = {"patches_dir": str(patches_dir), **config.to_dict()}
    return atomic_write_text(out / CONFIG_NAME, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_run_config(run_dir: str | os.PathLike[str]) -> tuple[Path, TrainConfig]:
    """``(patches_dir, TrainConfig)`` from a run folder's ``config.json``; TrainingError naming the file if unreadable."""
    path = Path(run_dir) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
        patches = Path(data.pop("patches_dir"))
        return patches, TrainConfig.from_dict(data)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no such run config") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{path}: not a run config ({exc})") from None


def find_runs(runs_dir: str | os.PathLike[str], *, finished: bool = True) -> list[Path]:
    """Run folders directly under ``runs_dir`` (``config.json`` + ``best.pt``), newest ``best.pt``
    first; ``finished``: only those whose ``last.pt`` reached the configured epochs (what notebooks
    04 and 05 pick up from notebook 03). ``[]`` if there are none or ``runs_dir`` does not exist."""
    from aeutils.checkpoint import read_checkpoint
    from aeutils.errors import AeutilsError

    root = Path(runs_dir)
    found = []
    for run in (d for d in (root.iterdir() if root.is_dir() else ()) if d.is_dir()):
        if not ((run / CONFIG_NAME).is_file() and (run / "best.pt").is_file()):
            continue
        if finished:
            try:
                done = int(read_checkpoint(run / "last.pt")["meta"].get("epoch", 0))
                if done < read_run_config(run)[1].epochs:
                    continue
            except (AeutilsError, ValueError, TypeError):
                continue
        found.append(run)
    return sorted(found, key=lambda d: (d / "best.pt").stat().st_mtime, reverse=True)


def _differences(old: TrainConfig, new: TrainConfig) -> list[str]:
    a, b = old.recipe(), new.recipe()
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in b if a.get(k) != b.get(k)]


@dataclass
class TrainEvent:
    """What a :func:`train` callback is given: ``kind`` "epoch" (rank 0, after the epoch's
    checkpoint; ``row`` is its log row) or "end" (every rank, before the run returns), the epoch
    number (1-based, finished epochs), this process's ``rank``, the :class:`Trainer` and the run folder."""

    kind: str
    epoch: int
    rank: int
    trainer: "Trainer"
    out_dir: Path
    row: dict[str, Any] = field(default_factory=dict)


def _check_manifest(patches_dir: Path) -> None:
    """A manifest that lists no patches (header only) is said so, before the data module looks for images."""
    manifest = patches_dir if patches_dir.name == "manifest.csv" else patches_dir / "manifest.csv"
    if manifest.is_file():
        from aeutils.manifest import read_manifest

        if not read_manifest(manifest):
            raise TrainingError(f"no patches listed in {manifest} (an extraction that found no tissue? rerun extract)")


def _check_images(train_ds: Any, val_ds: Any) -> None:
    """Every image checked before the first epoch, so a bad file does not cost an epoch: the
    validation patches this run uses are decoded (they are read every epoch anyway), the training
    ones structure-checked (PIL ``verify``: chunks and CRCs, no decoding). PatchError names the file."""
    from PIL import Image

    from aeutils.errors import PatchError

    for i in range(len(val_ds)):
        val_ds[i]
    for rec in train_ds.records:
        try:
            with Image.open(rec.path) as im:
                im.verify()
        except FileNotFoundError:
            raise PatchError(f"{rec.path}: patch image is missing") from None
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
            raise PatchError(f"{rec.path}: corrupt or unreadable image ({type(exc).__name__}: {exc})") from None


def train(
    patches_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: TrainConfig | AutoencoderConfig | None = None,
    *,
    callbacks: Sequence[Callable[[TrainEvent], None]] = (),
    **overrides: Any,
) -> TrainResult:
    """Train an :class:`Autoencoder` on the patches in ``patches_dir`` (an extraction output or an
    image folder; split as in :mod:`aeutils.data`), writing ``config.json``, checkpoints and logs to
    ``out_dir``.

    ``config``: a :class:`TrainConfig` (every knob; default ``TrainConfig()``); ``overrides``: its
    fields as keywords (``train(p, out, epochs=3)``, or on top of ``config``). An
    :class:`AutoencoderConfig` as ``config`` is taken as the architecture (the older keyword form).
    ``callbacks``: functions of a :class:`TrainEvent`, called after each epoch (rank 0) and at the end
    (every rank).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs DistributedDataParallel with a
    DistributedSampler; only rank 0 validates and writes. Raises :class:`TrainingError` for no
    data, an existing run without ``resume`` (or a different one with ``resume="auto"``), or a
    NaN/inf loss (the last good checkpoint is kept); :class:`~aeutils.errors.PatchError` for a corrupt
    patch, found before the first epoch.
    """
    started = time.perf_counter()
    if isinstance(config, AutoencoderConfig):
        overrides.setdefault("architecture", config)
        config = None
    if "config" in overrides:  # train(p, out, config=AutoencoderConfig(...), epochs=...) as before
        arch = overrides.pop("config")
        if isinstance(arch, TrainConfig):
            config = arch
        else:
            overrides.setdefault("architecture", arch)
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig or an AutoencoderConfig, got {type(config).__name__}")
    try:
        cfg = (config or TrainConfig()).replace(**overrides) if overrides else (config or TrainConfig())
    except TypeError as exc:  # an unknown keyword
        raise TypeError(f"train(): {exc}") from None
    patches_dir, out = Path(patches_dir), Path(out_dir)
    device = _rank_device(cfg.device)
    rank, world, own_group = _dist_setup(device)
    try:
        return _train(cfg, patches_dir=patches_dir, out=out, device=device, started=started, rank=rank, world=world,
                      callbacks=tuple(callbacks))
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(  # noqa: C901 - one linear procedure reads best
    cfg: TrainConfig, *, patches_dir: Path, out: Path, device: torch.device, started: float, rank: int, world: int,
    callbacks: tuple[Callable[[TrainEvent], None], ...],
) -> TrainResult:
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    epochs, batch_size, crop, lr, weight_decay = cfg.epochs, cfg.batch_size, cfg.crop, cfg.lr, cfg.weight_decay
    stain_jitter, seed, max_steps, time_budget, val_limit = cfg.stain_jitter, cfg.seed, cfg.max_steps, cfg.time_budget, cfg.val_limit
    channels_last, amp, log_every, progress, verbose = cfg.channels_last, cfg.amp, cfg.log_every, cfg.progress, cfg.verbose
    config = cfg.architecture
    last, best = out / "last.pt", out / "best.pt"
    resume = cfg.resume
    if resume == "auto":
        if last.exists() and (out / CONFIG_NAME).exists():
            diff = _differences(read_run_config(out)[1], cfg)
            if diff:
                raise TrainingError(
                    f"{out}: already holds a run with other settings ({'; '.join(diff)}); pass --resume to "
                    f"continue it with these, or choose another --out"
                )
        resume = last.exists()
    if last.exists() and not resume:
        raise TrainingError(f"{out}: already holds a run (last.pt); pass --resume to continue it or choose another --out")
    if resume and not last.exists():
        raise TrainingError(f"{last}: nothing to resume (no last.pt in the run folder)")
    _check_manifest(patches_dir)
    dev: torch.device = device  # chosen in train() before the process group

    # data
    train_ds = PatchDataset(patches_dir, "train", crop=crop, stain_jitter=stain_jitter)
    if len(train_ds) < batch_size * world:
        raise TrainingError(
            f"{patches_dir}: {len(train_ds)} training patches, fewer than one batch ({batch_size} x {world} processes)"
        )
    val_full = PatchDataset(patches_dir, "val", crop=_val_crop(train_ds, crop), augment=False)
    val_ds: Any = val_full
    if val_limit is not None and len(val_full) > val_limit:
        val_ds = Subset(val_full, np.linspace(0, len(val_full) - 1, val_limit).round().astype(int).tolist())
    steps_per_epoch = len(train_ds) // (batch_size * world)
    total = epochs * steps_per_epoch
    warmup = min(200, total // 20) if cfg.warmup_steps is None else cfg.warmup_steps
    n_workers = _default_workers(dev, world) if cfg.workers is None else cfg.workers
    _check_images(train_ds, val_ds)  # a corrupt patch is found now, not after an epoch of training
    print_every = cfg.print_every or max(1, math.ceil(epochs / 20))

    # model + trainer (identical initial weights on every rank; DDP also broadcasts rank 0's)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(last)
        if config is not None and config != ckpt.config:
            raise TrainingError(f"{last}: --config differs from the run's architecture {ckpt.config.to_dict()}")
        config = ckpt.config
    seed_everything(seed)
    model = Autoencoder(config or AutoencoderConfig())
    if ckpt is not None:
        model.load_state_dict(ckpt.model.state_dict())
    loss = ReconstructionLoss(mse=cfg.mse, l1=cfg.l1, ssim=cfg.ssim, vgg=cfg.vgg, vgg_weights=cfg.vgg_weights)
    choice = _run_speed(
        ckpt, model, loss, dev, batch_size=batch_size, crop=crop, channels_last=channels_last, amp=amp, lr=lr,
        weight_decay=weight_decay, remaining=max(0, (min(total, max_steps) if max_steps else total) - (
            int(ckpt.train_state.get("global_step", 0)) if ckpt is not None and ckpt.train_state else 0)),
        time_budget=time_budget, rank=rank, world=world, verbose=verbose and rank == 0,
    )
    trainer = Trainer(
        model, lr=lr, weight_decay=weight_decay, loss=loss, device=dev, channels_last=channels_last, amp=amp,
        total_steps=total, warmup_steps=warmup, schedule=cfg.schedule, speed=choice,
    )
    seed_everything(seed + 1000 * rank)  # different augmentations per rank
    start_epoch, best_psnr, best_loss = 0, -math.inf, math.inf
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        ts = ckpt.train_state
        if not ts:
            raise TrainingError(f"{last}: has no training state (a model-only checkpoint cannot be resumed)")
        trainer.load_state_dict(ts)
        if rank:
            seed_everything(seed + 1000 * rank + int(ts["epoch"]))
        start_epoch = int(ts["epoch"])
        best_psnr, best_loss = float(ts.get("best_psnr", -math.inf)), float(ts.get("best_loss", math.inf))
        history = _read_log(out / LOG_NAME, start_epoch)

    args_meta = {
        "patches_dir": str(patches_dir), "epochs": epochs, "batch_size": batch_size, "crop": crop, "lr": lr,
        "weight_decay": weight_decay, "loss": dict(loss.weights), "stain_jitter": stain_jitter, "seed": seed,
        "schedule": cfg.schedule, "warmup_steps": warmup, "world_size": world, "device": str(dev),
        "channels_last": trainer.channels_last, "amp": trainer.amp, "speed": trainer.speed.to_dict(),
        "n_train": len(train_ds), "n_val": len(val_ds),
    }
    writer = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, patches_dir, cfg)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"), purge_step=trainer.global_step or None)
        if verbose:
            print(
                f"aeutils train: {len(train_ds)} training / {len(val_ds)} validation patches, "
                f"{steps_per_epoch} steps/epoch x {epochs} epochs, batch {batch_size}x{world}, crop {crop}, "
                f"device {dev}, workers {n_workers}, speed {trainer.speed.name} ({trainer.speed.source})",
                flush=True,
            )

    stopped = "epochs"
    epoch = start_epoch
    budget_start = time.perf_counter()
    if start_epoch >= epochs:
        stopped = "nothing_to_do"
    try:
        for epoch in range(start_epoch, epochs):
            sampler = None
            if world > 1:
                sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
                sampler.set_epoch(epoch)
            loader = DataLoader(
                train_ds, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
                num_workers=n_workers, pin_memory=dev.type == "cuda", timeout=300 if n_workers else 0,
                generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
                persistent_workers=False,
            )
            bar = None
            if progress and rank == 0:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
            t0, loss_sum, n = time.perf_counter(), 0.0, 0
            for batch in loader:
                try:
                    value = float(trainer.step(batch))
                except TrainingError as exc:
                    kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
                    raise TrainingError(
                        f"{exc} at epoch {epoch + 1}, step {trainer.global_step + 1}: training stopped; {kept}. "
                        f"Lower --lr, or check the patches in {patches_dir}"
                    ) from None
                loss_sum, n = loss_sum + value, n + 1
                if writer is not None and trainer.global_step % log_every == 0:
                    writer.add_scalar("train/loss_step", value, trainer.global_step)
                    writer.add_scalar("train/lr", trainer.lr, trainer.global_step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4g}", lr=f"{trainer.lr:.2g}")
                if max_steps is not None and trainer.global_step >= max_steps:
                    stopped = "max_steps"
                    break
                if time_budget is not None and time.perf_counter() - budget_start >= time_budget:
                    stopped = "time_budget"
                    break
            if bar is not None:
                bar.close()
            train_seconds = time.perf_counter() - t0
            if world > 1:  # DDP keeps BN running stats per rank; make rank 0's the shared ones
                for b in trainer.module.buffers():
                    dist.broadcast(b, 0)
            if rank == 0:
                v0 = time.perf_counter()
                metrics = trainer.evaluate(_val_batches(val_ds, max(1, batch_size)))
                row: dict[str, Any] = {
                    "epoch": epoch + 1, "step": trainer.global_step, "lr": trainer.lr,
                    "train_loss": loss_sum / max(1, n), "val_loss": metrics["loss"], "val_psnr": metrics["psnr"],
                    "val_ssim": metrics["ssim"], "train_seconds": train_seconds,
                    "images_per_s": n * batch_size * world / max(train_seconds, 1e-9),
                    "val_seconds": time.perf_counter() - v0, "speed": trainer.speed.name,
                }
                has_val = math.isfinite(metrics["psnr"])
                improved = metrics["psnr"] > best_psnr if has_val else row["train_loss"] < best_loss
                if improved:
                    best_psnr = metrics["psnr"] if has_val else best_psnr
                    best_loss = row["train_loss"]
                row["best"] = int(improved)
                history.append(row)
                assert writer is not None
                for k in ("train_loss", "val_loss", "val_psnr", "val_ssim", "images_per_s"):
                    writer.add_scalar(f"epoch/{k}", row[k], epoch + 1)
                _log_images(writer, trainer, val_ds, epoch + 1)
                writer.flush()
                _write_log(out / LOG_NAME, history)
                state = trainer.state_dict()
                state.update(epoch=epoch + 1, best_psnr=best_psnr, best_loss=best_loss)
                metrics_meta = {k: row[k] for k in ("train_loss", "val_loss", "val_psnr", "val_ssim")}
                meta = {"train_args": args_meta, "global_step": trainer.global_step}
                if improved:
                    save_checkpoint(best, trainer.module, meta=meta, epoch=epoch + 1, metrics=metrics_meta)
                save_checkpoint(last, trainer.module, meta=meta, train_state=state, epoch=epoch + 1, metrics=metrics_meta)
                for cb in callbacks:
                    cb(TrainEvent("epoch", epoch + 1, rank, trainer, out, row))
                shown = (epoch + 1) % print_every == 0 or epoch == start_epoch or epoch + 1 == epochs or stopped != "epochs"
                if verbose and shown:
                    print(
                        f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.5f}, val PSNR {row['val_psnr']:.2f} dB, "
                        f"SSIM {row['val_ssim']:.4f}, {row['images_per_s']:.1f} img/s{' (best)' if improved else ''}",
                        flush=True,
                    )
            if world > 1:
                dist.barrier()
            if stopped != "epochs":
                break
        epochs_done = epoch + 1 if stopped != "nothing_to_do" else start_epoch
    finally:
        if writer is not None:
            writer.close()
    for cb in callbacks:
        cb(TrainEvent("end", epochs_done, rank, trainer, out))
    if world > 1:
        dist.barrier()
    return TrainResult(
        out_dir=out, last=last, best=best, epochs_done=epochs_done, global_step=trainer.global_step,
        stopped=stopped, best_psnr=best_psnr, seconds=time.perf_counter() - started, history=history,
    )


def _log_images(writer: Any, trainer: Trainer, val_ds: Any, epoch: int, n: int = 8) -> None:
    """Input (top row) / reconstruction (bottom row) grid of the first validation patches."""
    if not len(val_ds):
        return
    from torchvision.utils import make_grid

    x = torch.stack([val_ds[i] for i in range(min(n, len(val_ds)))])
    y, _ = trainer.reconstruct(x)
    writer.add_image("val/input_vs_reconstruction", make_grid(torch.cat([x, y.cpu()]), nrow=x.shape[0]), epoch)


# --------------------------------------------------------------------------- CLI


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if "," in text:
            return [_parse_value(t) for t in text.split(",") if t]
        return text


def parse_config(items: Sequence[str] | None) -> AutoencoderConfig | None:
    """``--config`` values -> AutoencoderConfig: a JSON object, a path to a JSON file, or
    ``key=value`` items (``n_blocks=2 widths=32,32,8 activation=silu``). ``None`` if no items."""
    if not items:
        return None
    data: dict[str, Any] = {}
    for item in items:
        item = item.strip()
        if item.startswith("{"):
            try:
                data.update(json.loads(item))
            except json.JSONDecodeError as exc:
                raise TrainingError(f"--config: invalid JSON ({exc})") from None
        elif "=" in item:
            key, value = item.split("=", 1)
            data[key.strip()] = _parse_value(value.strip())
        elif Path(item).is_file():
            try:
                data.update(json.loads(Path(item).read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                raise TrainingError(f"{item}: not a JSON config file ({exc})") from None
        else:
            raise TrainingError(f"--config {item!r}: expected key=value, a JSON object or a JSON file")
    return _architecture(data, "--config")


def parse_duration(text: str | float | None) -> float | None:
    """'90', '90s', '45m', '1.5h' -> seconds."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([smh]?)\s*", str(text))
    if not m:
        raise TrainingError(f"time budget {text!r}: expected seconds or a number with s, m or h")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m aeutils train``."""
    parser.add_argument("patches_dir", metavar="PATCHES_DIR", help="extraction output (manifest.csv) or folder of images")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder: last.pt, best.pt, log.csv, tensorboard/")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16, help="per process (default 16)")
    parser.add_argument("--crop", type=int, default=181, help="training crop side, 4k+1 px (default 181)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument(
        "--config", nargs="+", action="extend", metavar="KEY=VALUE",
        help="architecture: key=value items (n_blocks=2 widths=32,32,8), a JSON object, or a JSON file",
    )
    parser.add_argument(
        "--resume", action="store_true",
        help="continue RUN_DIR/last.pt, also with changed settings (e.g. more --epochs); without it the same "
             "command continues a run whose config.json matches and refuses a different one",
    )
    parser.add_argument("--mse", type=float, default=1.0, help="MSE weight (default 1)")
    parser.add_argument("--l1", type=float, default=0.0, help="L1 weight")
    parser.add_argument("--ssim", type=float, default=0.0, help="(1 - SSIM) weight")
    parser.add_argument("--vgg", type=float, default=0.0, help="VGG19 content weight (needs --vgg-weights)")
    parser.add_argument("--vgg-weights", default=None, metavar="PTH", help="local torchvision VGG19 weights file")
    parser.add_argument("--stain-jitter", type=float, default=0.0, help="HED stain jitter strength (0.02-0.05 mild)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps in total")
    parser.add_argument("--time-budget", default=None, help="stop after this long: seconds, or 45m, 1.5h")
    parser.add_argument("--val-limit", type=int, default=256, help="validate on at most N patches (0: all)")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="channels_last memory format (auto: on for CUDA; on the CPU measured once per run)")
    parser.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                        help="mixed precision, bf16 autocast on the CPU (auto: on for CUDA; on the CPU measured once per run)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--print-every", type=int, default=None, metavar="N",
                        help="an epoch line every N epochs (default: about 20 lines; all rows are in log.csv)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of ``python -m aeutils train`` flags (no ``--resume``: ``"auto"``, so
    rerunning the same command continues its run)."""
    tri = {"auto": None, "on": True, "off": False}
    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, crop=args.crop, lr=args.lr, weight_decay=args.weight_decay,
        architecture=parse_config(args.config), resume=True if args.resume else "auto", mse=args.mse, l1=args.l1,
        ssim=args.ssim, vgg=args.vgg, vgg_weights=args.vgg_weights, stain_jitter=args.stain_jitter, device=args.device,
        workers=args.workers, seed=args.seed, max_steps=args.max_steps, time_budget=parse_duration(args.time_budget),
        val_limit=args.val_limit or None, schedule=args.schedule, warmup_steps=args.warmup_steps,
        channels_last=tri[args.channels_last], amp=tri[args.amp], progress=args.progress,
        print_every=getattr(args, "print_every", None),
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run ``python -m aeutils train``; exit code 0."""
    result = train(args.patches_dir, args.out, config_from_args(args))
    if int(os.environ.get("RANK", "0")) == 0:
        f = result.final
        print(
            f"done ({result.stopped}): {result.epochs_done} epochs, {result.global_step} steps in {result.seconds:.0f} s; "
            f"last val PSNR {f.get('val_psnr', float('nan')):.2f} dB, SSIM {f.get('val_ssim', float('nan')):.4f}; "
            f"checkpoints {result.last} and {result.best}; logs: tensorboard --logdir {result.out_dir}"
            if f else f"done ({result.stopped}): nothing to train; checkpoints in {result.out_dir}"
        )
    return 0
