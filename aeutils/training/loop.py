"""The training run, :func:`train`: from a patch folder and a :class:`TrainConfig` to a run folder
of checkpoints and logs, on the CPU, one GPU or several under ``torchrun`` (DDP; rank 0 validates and
writes). Read top to bottom, :func:`_train` is: decide start or resume (a finished run of the same
recipe returns at once, its folder untouched), load and check the data, build
the trainer (or restore it), open the outputs, then per epoch train, validate, log, checkpoint."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from aeutils.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from aeutils.errors import TrainingError
from aeutils.model import Autoencoder, AutoencoderConfig
from aeutils.speed import Choice, candidate_name
from aeutils.training.config import TrainConfig, config_differences
from aeutils.training.datasets import RunData, check_manifest, run_data, val_batches
from aeutils.training.distributed import from_rank0, rank0_says, rank_device, setup_process_group, share_buffers
from aeutils.training.logs import (
    LOG_NAME, close_writer, epoch_bar, epoch_line, epoch_printed, log_epoch, log_step, open_writer, read_log,
    write_log,
)
from aeutils.training.rng import seed_everything
from aeutils.training.runs import (
    BEST_NAME, CONFIG_NAME, LAST_NAME, read_run_config, resume_decision, run_folder_lock, write_run_config,
)
from aeutils.training.step import ReconstructionLoss, choose_speed
from aeutils.training.trainer import Trainer

__all__ = ["TrainResult", "TrainEvent", "train"]


@dataclass
class TrainResult:
    """What :func:`train` did: the run folder, checkpoints, finished epochs and per-epoch history (the
    CSV rows), why it stopped ("epochs", "max_steps", "time_budget", "nothing_to_do"), the best
    validation PSNR and the wall time of this call (seconds). A stop inside an epoch does not finish
    it: ``epoch_steps`` of its ``steps_per_epoch`` steps are done (0: stopped between epochs) and
    ``last.pt`` holds the position, so rerunning continues that epoch where it stopped."""

    out_dir: Path
    last: Path
    best: Path
    epochs_done: int
    global_step: int
    stopped: str
    best_psnr: float
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_steps: int = 0
    steps_per_epoch: int = 0

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's row of the log."""
        return self.history[-1] if self.history else {}


@dataclass
class TrainEvent:
    """What a :func:`train` callback is given: ``kind`` "epoch" (rank 0, after the epoch's
    checkpoint; ``row`` is its log row) or "end" (every rank, before the run returns), the epoch
    number (1-based, finished epochs), this process's ``rank``, the :class:`Trainer` and the run folder."""

    kind: str
    epoch: int
    rank: int
    trainer: Trainer
    out_dir: Path
    row: dict[str, Any] = field(default_factory=dict)


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

    A finished run (``resume`` True or "auto", its ``config.json`` the same recipe, ``last.pt`` at
    ``epochs``) returns its result (``stopped="nothing_to_do"``) at once: no patch is read and no
    file in ``out_dir`` is written.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs DistributedDataParallel with a
    DistributedSampler; only rank 0 validates and writes. Raises :class:`TrainingError` for no
    data, an existing run without ``resume`` (or a different one with ``resume="auto"``), or a
    NaN/inf loss (the last good checkpoint is kept); :class:`~aeutils.errors.PatchError` for a corrupt
    patch, found before the first epoch.
    """
    started = time.perf_counter()
    cfg = _config_of(config, overrides)
    patches_dir, out = Path(patches_dir), Path(out_dir)
    device = rank_device(cfg.device)
    rank, world, own_group = setup_process_group(device)
    try:
        with run_folder_lock(out, rank):  # one writer per run folder
            return _train(cfg, patches_dir, out, device, started, rank, world, tuple(callbacks))
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _config_of(config: TrainConfig | AutoencoderConfig | None, overrides: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of ``train(p, out, config, **overrides)``, also of the older keyword forms
    (an AutoencoderConfig as ``config``, or ``config=`` among the keywords)."""
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
        return (config or TrainConfig()).replace(**overrides) if overrides else (config or TrainConfig())
    except TypeError as exc:  # an unknown keyword
        raise TypeError(f"train(): {exc}") from None


@dataclass
class _Run:
    """One call of :func:`train` under way: its settings, data, trainer and outputs, and where it stands."""

    cfg: TrainConfig
    patches_dir: Path
    out: Path
    rank: int
    world: int
    data: RunData
    trainer: Trainer
    callbacks: tuple[Callable[[TrainEvent], None], ...]
    meta: dict[str, Any] = field(default_factory=dict)  # the checkpoints' train_args
    writer: Any = None  # TensorBoard, rank 0 only
    start_epoch: int = 0
    best_psnr: float = -math.inf
    best_loss: float = math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "epochs"
    epochs_done: int = 0
    in_epoch: dict[str, Any] = field(default_factory=dict)  # a stop inside an epoch: its steps, loss sum, seconds

    @property
    def last(self) -> Path:
        return self.out / LAST_NAME

    @property
    def best(self) -> Path:
        return self.out / BEST_NAME


def _train(
    cfg: TrainConfig, patches_dir: Path, out: Path, device: torch.device, started: float, rank: int, world: int,
    callbacks: tuple[Callable[[TrainEvent], None], ...],
) -> TrainResult:
    """:func:`train` once the device and process group are set: the run's steps, in order."""
    resume = resume_decision(out, cfg)  # refused before anything is read or written
    if resume:
        finished = _finished_run(cfg, out, device, started, rank, callbacks)
        if finished is not None:  # nothing to train: the folder is left exactly as it is
            return finished
    check_manifest(patches_dir)
    data = run_data(patches_dir, cfg, device, world)  # every image checked: no epoch lost to a bad file
    ckpt = load_checkpoint(out / LAST_NAME) if resume else None
    trainer = _build_trainer(cfg, ckpt, out / LAST_NAME, data, device, rank, world)
    run = _Run(cfg, patches_dir, out, rank, world, data, trainer, callbacks)
    _restore(run, ckpt)
    _open_outputs(run)
    epochs_done = _run_epochs(run)
    for cb in callbacks:
        cb(TrainEvent("end", epochs_done, rank, trainer, out))
    if world > 1:
        dist.barrier()
    return TrainResult(
        out_dir=out, last=run.last, best=run.best, epochs_done=epochs_done, global_step=trainer.global_step,
        stopped=run.stopped, best_psnr=run.best_psnr, seconds=time.perf_counter() - started, history=run.history,
        epoch_steps=int(run.in_epoch.get("steps", 0)), steps_per_epoch=data.steps_per_epoch,
    )


def _finished_run(
    cfg: TrainConfig, out: Path, device: torch.device, started: float, rank: int,
    callbacks: tuple[Callable[[TrainEvent], None], ...],
) -> TrainResult | None:
    """The result of the run in ``out`` if it is this recipe (``config.json``; all but
    :data:`~aeutils.training.RUNTIME_FIELDS`) and ``last.pt`` reached ``cfg.epochs``, read from
    ``last.pt`` and ``log.csv`` without checking the patches or writing anything; None otherwise
    (the run continues, or changed settings are applied, as usual). The callbacks' "end" event gets
    a :class:`Trainer` restored from ``last.pt``."""
    if not (out / CONFIG_NAME).is_file() or config_differences(read_run_config(out)[1], cfg):
        return None
    ckpt = load_checkpoint(out / LAST_NAME)
    ts = ckpt.train_state
    if not ts or int(ts.get("epoch", 0)) < cfg.epochs:
        return None
    epochs_done = int(ts["epoch"])
    if cfg.verbose and rank == 0:
        print(f"aeutils train: {out} is finished ({epochs_done}/{cfg.epochs} epochs): nothing to do", flush=True)
    if callbacks:
        trainer = _restored_trainer(cfg, ckpt, device)
        for cb in callbacks:
            cb(TrainEvent("end", epochs_done, rank, trainer, out))
    return TrainResult(
        out_dir=out, last=out / LAST_NAME, best=out / BEST_NAME, epochs_done=epochs_done,
        global_step=int(ts.get("global_step", 0)), stopped="nothing_to_do",
        best_psnr=float(ts.get("best_psnr", -math.inf)), seconds=time.perf_counter() - started,
        history=read_log(out / LOG_NAME, epochs_done), steps_per_epoch=_steps_per_epoch(cfg, ckpt),
    )


def _restored_trainer(cfg: TrainConfig, ckpt: Checkpoint, device: torch.device) -> Trainer:
    """A :class:`Trainer` in the state of a finished run's ``ckpt`` (weights, optimiser, schedule, step;
    its stored speed choice), with no probe and no data."""
    ta = ckpt.meta.get("train_args", {})
    steps_per_epoch = _steps_per_epoch(cfg, ckpt)
    model = Autoencoder(ckpt.config)
    model.load_state_dict(ckpt.model.state_dict())
    loss = ReconstructionLoss(mse=cfg.mse, l1=cfg.l1, ssim=cfg.ssim, vgg=cfg.vgg, vgg_weights=cfg.vgg_weights)
    trainer = Trainer(
        model, lr=cfg.lr, weight_decay=cfg.weight_decay, loss=loss, device=device, channels_last=cfg.channels_last,
        amp=cfg.amp, total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=int(ta.get("warmup_steps", 0)), schedule=cfg.schedule, speed=_stored_speed(ckpt),
    )
    trainer.load_state_dict(ckpt.train_state)
    return trainer


def _steps_per_epoch(cfg: TrainConfig, ckpt: Checkpoint) -> int:
    """The optimiser steps per epoch of the run that wrote ``ckpt``, counted as :func:`run_data` does."""
    ta = ckpt.meta.get("train_args", {})
    n_train, world = int(ta.get("n_train", 0)), int(ta.get("world_size", 1))
    return max(1, n_train // max(1, cfg.batch_size * world))


def _build_trainer(
    cfg: TrainConfig, ckpt: Checkpoint | None, last: Path, data: RunData, device: torch.device, rank: int,
    world: int,
) -> Trainer:
    """The model (seeded; a resumed run's architecture and weights from ``last``'s ``ckpt``), its loss,
    the speed choice and the :class:`Trainer` (identical initial weights on every rank; DDP also broadcasts rank 0's)."""
    architecture = cfg.architecture
    if ckpt is not None:
        if architecture is not None and architecture != ckpt.config:
            raise TrainingError(f"{last}: --config differs from the run's architecture {ckpt.config.to_dict()}")
        architecture = ckpt.config
    seed_everything(cfg.seed)
    model = Autoencoder(architecture or AutoencoderConfig())
    if ckpt is not None:
        model.load_state_dict(ckpt.model.state_dict())
    loss = ReconstructionLoss(mse=cfg.mse, l1=cfg.l1, ssim=cfg.ssim, vgg=cfg.vgg, vgg_weights=cfg.vgg_weights)
    total = cfg.epochs * data.steps_per_epoch
    done = int(ckpt.train_state.get("global_step", 0)) if ckpt is not None and ckpt.train_state else 0
    remaining = max(0, (min(total, cfg.max_steps) if cfg.max_steps else total) - done)
    choice = _run_speed(cfg, ckpt, model, loss, device, remaining, rank, world)
    warmup = min(200, total // 20) if cfg.warmup_steps is None else cfg.warmup_steps
    return Trainer(
        model, lr=cfg.lr, weight_decay=cfg.weight_decay, loss=loss, device=device, channels_last=cfg.channels_last,
        amp=cfg.amp, total_steps=total, warmup_steps=warmup, schedule=cfg.schedule, speed=choice,
    )


def _run_speed(
    cfg: TrainConfig, ckpt: Checkpoint | None, model: nn.Module, loss: nn.Module, device: torch.device,
    remaining: int, rank: int, world: int,
) -> Choice:
    """This run's speed choice: a resumed run's stored one (no probe) unless an option is forced
    against it, else :func:`choose_speed` (rank 0 measures, the other ranks take its answer)."""
    verbose = cfg.verbose and rank == 0
    stored = _stored_speed(ckpt)
    if stored is not None and (cfg.channels_last is None or cfg.channels_last == stored.channels_last) and (
            cfg.amp is None or cfg.amp == stored.amp):
        resumed = Choice(stored.name, "resumed", stored.rates, stored.probe_seconds, stored.what)
        if verbose:
            print(resumed.describe(), flush=True)
        return resumed

    def measure() -> Choice:
        return choose_speed(
            model, loss, (cfg.batch_size, 3, cfg.crop, cfg.crop), device, channels_last=cfg.channels_last,
            amp=cfg.amp, lr=cfg.lr, weight_decay=cfg.weight_decay, expected_steps=remaining,
            time_budget=cfg.time_budget, verbose=verbose,
        )

    if world > 1 and dist.is_initialized():
        return Choice.from_dict(from_rank0(lambda: measure().to_dict(), rank))
    return measure()


def _stored_speed(ckpt: Checkpoint | None) -> Choice | None:
    """The speed choice a checkpoint's run made (for a run from before the probe: its flags)."""
    if ckpt is None:
        return None
    ta = ckpt.meta.get("train_args", {})
    stored = ta.get("speed")
    if stored is None and "channels_last" in ta:  # a run from before the probe: its flags were the choice
        stored = {"name": candidate_name(bool(ta["channels_last"]), bool(ta.get("amp"))), "source": "resumed"}
    return Choice.from_dict(stored) if stored is not None else None


def _restore(run: _Run, ckpt: Checkpoint | None) -> None:
    """Seed this rank's augmentations; for a resumed run restore the training state (optimiser,
    scaler, schedule, step, RNGs), the epoch (and the position inside it, after a stop there), the
    best scores and the log rows so far."""
    cfg, rank = run.cfg, run.rank
    seed_everything(cfg.seed + 1000 * rank)  # different augmentations per rank
    if ckpt is None:
        return
    ts = ckpt.train_state
    if not ts:
        raise TrainingError(f"{run.last}: has no training state (a model-only checkpoint cannot be resumed)")
    run.trainer.load_state_dict(ts)
    if rank:
        seed_everything(cfg.seed + 1000 * rank + int(ts["epoch"]))
    run.start_epoch = run.epochs_done = int(ts["epoch"])
    run.in_epoch = dict(ts.get("in_epoch") or {})
    run.best_psnr, run.best_loss = float(ts.get("best_psnr", -math.inf)), float(ts.get("best_loss", math.inf))
    run.history = read_log(run.out / LOG_NAME, run.start_epoch)


def _open_outputs(run: _Run) -> None:
    """The checkpoints' ``train_args``; on rank 0 the run folder, its ``config.json``, TensorBoard
    and the banner line."""
    cfg, trainer, data = run.cfg, run.trainer, run.data
    run.meta = {
        "patches_dir": str(run.patches_dir), "epochs": cfg.epochs, "batch_size": cfg.batch_size, "crop": cfg.crop,
        "lr": cfg.lr, "weight_decay": cfg.weight_decay, "loss": dict(trainer.loss_fn.weights),
        "stain_jitter": cfg.stain_jitter, "seed": cfg.seed, "schedule": cfg.schedule,
        "warmup_steps": trainer.schedule.warmup, "world_size": run.world, "device": str(trainer.device),
        "channels_last": trainer.channels_last, "amp": trainer.amp, "speed": trainer.speed.to_dict(),
        "n_train": len(data.train), "n_val": len(data.val),
    }
    if run.rank != 0:
        return
    run.out.mkdir(parents=True, exist_ok=True)
    write_run_config(run.out, run.patches_dir, cfg)
    run.writer = open_writer(run.out, trainer.global_step)
    if cfg.verbose:
        print(
            f"aeutils train: {len(data.train)} training / {len(data.val)} validation patches, "
            f"{data.steps_per_epoch} steps/epoch x {cfg.epochs} epochs, batch {cfg.batch_size}x{run.world}, "
            f"crop {cfg.crop}, device {trainer.device}, workers {data.workers}, "
            f"speed {trainer.speed.name} ({trainer.speed.source})"
            + (f"; continuing epoch {run.start_epoch + 1} after its step {run.in_epoch['steps']}" if run.in_epoch else ""),
            flush=True,
        )


def _run_epochs(run: _Run) -> int:
    """The epochs from ``run.start_epoch`` on (until ``cfg.epochs`` or a stop sets ``run.stopped``):
    train, share rank 0's BN statistics, rank 0 validates / logs / checkpoints. A stop inside an epoch
    checkpoints the position instead (rank 0): no validation, no log row, the epoch not counted. The
    finished epoch count."""
    cfg, world = run.cfg, run.world
    budget_start = time.perf_counter()
    if run.start_epoch >= cfg.epochs:
        run.stopped = "nothing_to_do"
    elif cfg.max_steps is not None and run.trainer.global_step >= cfg.max_steps:
        run.stopped = "max_steps"  # reached by an earlier call: not one step more
    try:
        for epoch in range(run.start_epoch, cfg.epochs if run.stopped == "epochs" else run.start_epoch):
            loss_sum, n, seconds, whole = _train_epoch(run, epoch, budget_start, run.in_epoch)
            run.in_epoch = {} if whole else {"steps": n, "loss_sum": loss_sum, "seconds": seconds}
            if world > 1:  # DDP keeps BN running stats per rank; make rank 0's (the saved ones) the shared ones
                share_buffers(run.trainer.module)
            if run.rank == 0:
                if whole:
                    _end_epoch(run, epoch, loss_sum, n, seconds)
                else:
                    _save_checkpoints(run, epoch, run.history[-1] if run.history else None, in_epoch=run.in_epoch)
            run.epochs_done = epoch + 1 if whole else epoch
            if world > 1:
                dist.barrier()
            if run.stopped != "epochs":
                break
    except BaseException:
        if run.writer is not None:
            close_writer(run.writer, quiet=True)  # the first error (e.g. a full disk) is the one reported
        raise
    if run.writer is not None:
        close_writer(run.writer)
    return run.epochs_done


def _train_epoch(run: _Run, epoch: int, budget_start: float, at: dict[str, Any]) -> tuple[float, int, float, bool]:
    """One epoch of optimiser steps, from the position ``at`` (``{}``, or the steps, loss sum and
    seconds a stop inside this epoch left), or fewer: ``max_steps`` / ``time_budget`` set
    ``run.stopped``; ``(sum of step losses, steps, seconds, whether the epoch is whole)``, all
    counted from the epoch's start. A NaN/inf loss stops the run naming the step and the checkpoint kept."""
    cfg, trainer = run.cfg, run.trainer
    start = int(at.get("steps", 0))
    loader = run.data.loader(cfg, epoch, run.rank, run.world, trainer.device, start=start)
    total = start + len(loader)
    bar = epoch_bar(total, epoch, cfg.epochs, done=start) if cfg.progress and run.rank == 0 else None
    t0, loss_sum, n = time.perf_counter() - float(at.get("seconds", 0.0)), float(at.get("loss_sum", 0.0)), start
    for batch in loader:
        try:
            value = float(trainer.step(batch))
        except TrainingError as exc:
            kept = f"the last good checkpoint {run.last} is kept" if run.last.exists() else "no checkpoint was written yet"
            raise TrainingError(
                f"{exc} at epoch {epoch + 1}, step {trainer.global_step + 1}: training stopped; {kept}. "
                f"Lower --lr, or check the patches in {run.patches_dir}"
            ) from None
        loss_sum, n = loss_sum + value, n + 1
        if run.writer is not None and trainer.global_step % cfg.log_every == 0:
            log_step(run.writer, trainer, value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4g}", lr=f"{trainer.lr:.2g}")
        if cfg.max_steps is not None and trainer.global_step >= cfg.max_steps:
            run.stopped = "max_steps"
            break
        if cfg.time_budget is not None and rank0_says(time.perf_counter() - budget_start >= cfg.time_budget,
                                                      trainer.device, run.world):
            run.stopped = "time_budget"
            break
    if bar is not None:
        bar.close()
    return loss_sum, n, time.perf_counter() - t0, n >= total


def _end_epoch(run: _Run, epoch: int, loss_sum: float, n: int, train_seconds: float) -> None:
    """Rank 0 after an epoch: validate, log (``log.csv``, TensorBoard), checkpoint (``last.pt``; also
    ``best.pt`` if validation PSNR improved, or the training loss where there is no validation set),
    tell the callbacks, print the epoch line every ``print_every`` epochs."""
    cfg, trainer = run.cfg, run.trainer
    row = _validate(run, epoch, loss_sum, n, train_seconds)
    has_val = math.isfinite(row["val_psnr"])
    improved = row["val_psnr"] > run.best_psnr if has_val else row["train_loss"] < run.best_loss
    if improved:
        run.best_psnr = row["val_psnr"] if has_val else run.best_psnr
        run.best_loss = row["train_loss"]
    row["best"] = int(improved)
    run.history.append(row)
    log_epoch(run.writer, trainer, run.data.val, row)
    write_log(run.out / LOG_NAME, run.history)
    _save_checkpoints(run, epoch + 1, row, improved)
    for cb in run.callbacks:
        cb(TrainEvent("epoch", epoch + 1, run.rank, trainer, run.out, row))
    if cfg.verbose and epoch_printed(epoch + 1, cfg.epochs, start_epoch=run.start_epoch, print_every=cfg.print_every,
                                     stopped=run.stopped != "epochs"):
        print(epoch_line(row, cfg.epochs), flush=True)


def _validate(run: _Run, epoch: int, loss_sum: float, n: int, train_seconds: float) -> dict[str, Any]:
    """The epoch's log row: step, LR, mean training loss, validation loss / PSNR (dB) / SSIM, speed."""
    trainer, batch_size = run.trainer, run.cfg.batch_size
    v0 = time.perf_counter()
    metrics = trainer.evaluate(val_batches(run.data.val, max(1, batch_size)))
    return {
        "epoch": epoch + 1, "step": trainer.global_step, "lr": trainer.lr,
        "train_loss": loss_sum / max(1, n), "val_loss": metrics["loss"], "val_psnr": metrics["psnr"],
        "val_ssim": metrics["ssim"], "train_seconds": train_seconds,
        "images_per_s": n * batch_size * run.world / max(train_seconds, 1e-9),
        "val_seconds": time.perf_counter() - v0, "speed": trainer.speed.name,
    }


def _save_checkpoints(
    run: _Run, epochs_done: int, row: dict[str, Any] | None, improved: bool = False, in_epoch: dict[str, Any] | None = None,
) -> None:
    """``last.pt`` with the whole training state after ``epochs_done`` finished epochs (and
    ``best.pt``, weights only, if ``improved``), atomically; ``row``: the log row whose metrics go
    into the metadata; ``in_epoch``: after a stop inside the next epoch, its steps done, their loss
    sum and seconds (``train_state["in_epoch"]``; with the RNG states taken now, a rerun replays the
    rest of that epoch exactly; covered by the checkpoint's ``state_digest`` like the rest)."""
    trainer = run.trainer
    state = trainer.state_dict()
    state.update(epoch=epochs_done, best_psnr=run.best_psnr, best_loss=run.best_loss)
    if in_epoch:
        state["in_epoch"] = dict(in_epoch)
    metrics = {k: row[k] for k in ("train_loss", "val_loss", "val_psnr", "val_ssim")} if row else None
    meta = {"train_args": run.meta, "global_step": trainer.global_step}
    if improved:
        save_checkpoint(run.best, trainer.module, meta=meta, epoch=epochs_done, metrics=metrics)
    save_checkpoint(run.last, trainer.module, meta=meta, train_state=state, epoch=epochs_done, metrics=metrics)
