"""SRGAN training (:func:`train_srgan`, ``python -m aeutils sr train PATCHES --out RUN``): pixel (MSE)
pretraining of the :class:`~aeutils.sr.arch.Generator`, then the GAN phase: pixel + content + adversarial
(SRGAN's 1e-3) against the :class:`~aeutils.sr.arch.Discriminator`. HR crops come from any ``extract``
output (or image folder; the train / validation roles of :mod:`aeutils.data`), their LR inputs are made on
the fly by :func:`aeutils.sr.degrade.downscale`.

The autoencoder trainer's machinery, reused: the device picked once (:mod:`aeutils.device`, under
``torchrun`` this rank's), the CPU speed probe (:func:`aeutils.speed.training_choice` on the generator's
pixel step), mixed precision and channels_last on CUDA, the patch checks before the first step, RNG states
as plain data (:mod:`aeutils.training.rng`), atomic digest-checked checkpoints (:mod:`aeutils.sr.checkpoint`),
``log.csv`` and TensorBoard writers (:mod:`aeutils.training.logs`), ``--time-budget`` parsing.

Run folder: ``config.json`` (the patch folder and the :class:`SRConfig`), ``last.pt`` (generator + the whole
training state: discriminator, optimisers, RNGs, step; written at every validation), ``best.pt`` (the
generator the validation judge ``select`` prefers, of the GAN phase; of pretraining if there is no GAN
phase), ``pixel.pt`` (the best-PSNR generator of pretraining: a pixel-loss SRResNet), ``log.csv`` (one
row per validation), ``tensorboard/``.

Exactness: batches are drawn in this process (no DataLoader workers) from RNGs saved in ``last.pt``, and
validation draws no random numbers, so a run stopped (``--max-steps``, ``--time-budget``, Ctrl-C after a
checkpoint) and resumed gives the same weights as an uninterrupted one, bit for bit on the same machine.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from aeutils.errors import TrainingError
from aeutils.io import atomic_write_text
from aeutils.sr.arch import Discriminator, Generator
from aeutils.sr.checkpoint import load_generator, save_generator
from aeutils.sr.config import SRConfig
from aeutils.sr.degrade import downscale
from aeutils.speed import Choice, training_choice
from aeutils.training.rng import rng_state, seed_everything, set_rng_state

__all__ = ["SRTrainResult", "train_srgan", "content_loss", "CONFIG_NAME", "LOG_NAME"]

CONFIG_NAME = "config.json"
LOG_NAME = "log.csv"


@dataclass
class SRTrainResult:
    """What :func:`train_srgan` did: the run folder, global step, why it stopped ("done", "max_steps",
    "time_budget", "nothing_to_do"), the best validation judge value, seconds, and the log rows."""

    out_dir: Path
    step: int
    stopped: str
    best: float
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


# ----------------------------------------------------------------------------------------------- pieces


def content_loss(cfg: SRConfig, say: Any = print) -> nn.Module | None:
    """The content loss ``cfg.content`` names (weight 1; None for ``"none"``), built as the SR bench builds
    its arms (:func:`aeutils.sr.bench.build_content_losses`; the encoder arms with their default taps).
    TrainingError saying why when an arm cannot be built here (e.g. the ``[baselines]`` extra missing)."""
    if cfg.content == "none":
        return None
    from aeutils.sr.bench import build_content_losses

    losses, skipped = build_content_losses([cfg.content], vgg19_weights=cfg.vgg19_weights,
                                           checkpoint=cfg.encoder_checkpoint, taps=("stage1",), say=lambda s: None)
    if cfg.content in skipped:
        raise TrainingError(f"--content {cfg.content}: not available here ({skipped[cfg.content]})")
    return next(iter(losses[cfg.content].values()))


def _hr_datasets(patches_dir: Path, cfg: SRConfig) -> tuple[Any, torch.Tensor]:
    """(training dataset of augmented (hr_size+1)-px crops, validation HR tensor Nx3xSxS centre crops)."""
    from aeutils.data import PatchDataset
    from aeutils.training.datasets import check_images, check_manifest

    check_manifest(patches_dir)
    crop = cfg.hr_size + 1  # PatchDataset crops 4k+1 sides: one row and column are dropped below
    train = PatchDataset(patches_dir, "train", crop=crop)
    val = PatchDataset(patches_dir, "val", crop=crop, augment=False)
    if len(train) < cfg.batch_size:
        raise TrainingError(f"{patches_dir}: {len(train)} training patches, fewer than one batch ({cfg.batch_size})")
    idx = list(range(len(val)))
    if cfg.val_limit is not None and len(idx) > cfg.val_limit:
        idx = np.linspace(0, len(val) - 1, cfg.val_limit).round().astype(int).tolist()
    from torch.utils.data import Subset

    from aeutils.data import read_image

    for p in [r.path for r in train.records[:1]]:  # before the checks: their message would name the 4k+1 crop
        h, w = read_image(p).shape[:2]
        if min(h, w) < crop:
            raise TrainingError(f"{p}: patches are {w}x{h} px, smaller than --hr-size {cfg.hr_size} + 1; "
                                f"extract larger patches or lower --hr-size")
    check_images(train, Subset(val, idx))
    hr_val = torch.stack([val[i][:, :-1, :-1] for i in idx]) if idx else torch.zeros(0, 3, cfg.hr_size, cfg.hr_size)
    return train, hr_val


def _batch(train: Any, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` training crops (indices from ``gen``; crop position and flips from the global torch RNG)."""
    idx = torch.randint(len(train), (n,), generator=gen).tolist()
    return torch.stack([train[i][:, :-1, :-1] for i in idx])


def _amp_dtype(device: torch.device) -> torch.dtype:
    from aeutils.training.step import amp_dtype_for

    return amp_dtype_for(device)


class _Nets:
    """Generator, discriminator (DDP-wrapped under torchrun), optimisers, grad scaler and the speed options."""

    def __init__(self, cfg: SRConfig, device: torch.device, speed: Choice, g_cfg: Any, d_channels: int) -> None:
        self.cfg, self.device, self.speed = cfg, device, speed
        self.g_module = Generator(g_cfg).to(device)
        self.d_module = Discriminator(d_channels).to(device)
        if speed.channels_last:
            self.g_module.to(memory_format=torch.channels_last)
            self.d_module.to(memory_format=torch.channels_last)
        self.ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.g: nn.Module = self.g_module
        self.d: nn.Module = self.d_module
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            self.g, self.d = DDP(self.g_module, device_ids=ids), DDP(self.d_module, device_ids=ids)
        self.opt_g = torch.optim.Adam(self.g_module.parameters(), lr=cfg.pretrain_lr, betas=(0.9, 0.999))
        self.opt_d = torch.optim.Adam(self.d_module.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        self.dtype = _amp_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=speed.amp and self.dtype == torch.float16 and device.type == "cuda")

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.speed.amp)

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.speed.channels_last else x

    def set_lr(self, step: int) -> float:
        """The learning rate of ``step`` (0-based): pretrain_lr, then lr, 10x lower from half the GAN phase."""
        cfg = self.cfg
        if step < cfg.pretrain_steps:
            lr = cfg.pretrain_lr
        else:
            lr = cfg.lr * (0.1 if step - cfg.pretrain_steps >= cfg.gan_steps // 2 else 1.0)
        for opt in (self.opt_g, self.opt_d):
            for g in opt.param_groups:
                g["lr"] = lr
        return lr

    def state(self) -> dict[str, Any]:
        return {"discriminator": {k: v.detach().cpu().clone() for k, v in self.d_module.state_dict().items()},
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "scaler": self.scaler.state_dict()}

    def load(self, ts: dict[str, Any], g_state: dict[str, torch.Tensor]) -> None:
        self.g_module.load_state_dict(g_state)
        self.d_module.load_state_dict(ts["discriminator"])
        self.opt_g.load_state_dict(ts["opt_g"])
        self.opt_d.load_state_dict(ts["opt_d"])
        if ts.get("scaler"):
            self.scaler.load_state_dict(ts["scaler"])


def _backward(nets: _Nets, loss: torch.Tensor, opt: torch.optim.Optimizer, what: str, step: int) -> None:
    """Check the loss (every rank together under DDP) before any weight changes, then step ``opt``."""
    value = loss.detach().clone()
    if nets.ddp:
        dist.all_reduce(value)
    if not math.isfinite(float(value)):
        raise TrainingError(f"non-finite {what} loss at step {step + 1}")
    opt.zero_grad(set_to_none=True)
    if nets.scaler.is_enabled():
        nets.scaler.scale(loss).backward()
        nets.scaler.step(opt)
        nets.scaler.update()
    else:
        loss.backward()
        opt.step()


def _train_step(nets: _Nets, hr: torch.Tensor, step: int, content: nn.Module | None, cw: float) -> dict[str, float]:
    """One step (0-based ``step``): pixel only before ``pretrain_steps``, else G (pixel + content +
    adversarial) then D (real vs fake, one batch). The parts' values."""
    cfg = nets.cfg
    hr = nets.prep(hr)
    lr_img = nets.prep(downscale(hr))
    nets.g.train()
    with nets.autocast():
        sr = nets.g(lr_img)
    sr32 = sr.float()
    pixel = F.mse_loss(sr32, hr)
    parts = {"pixel": float(pixel.detach())}
    if step < cfg.pretrain_steps:
        _backward(nets, cfg.pixel * pixel, nets.opt_g, "pixel", step)
        return parts
    total = cfg.pixel * pixel
    if content is not None:
        c = content(sr32, hr)
        total = total + cw * c
        parts["content"] = float(c.detach())
    nets.d.train()
    if cfg.adversarial > 0:
        with nets.autocast():
            fake_logit = nets.d(sr).float()
        adv = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
        total = total + cfg.adversarial * adv
        parts["adversarial"] = float(adv.detach())
    _backward(nets, total, nets.opt_g, "generator", step)
    if cfg.adversarial > 0:
        with nets.autocast():
            logits = nets.d(torch.cat([hr, sr.detach()])).float()
        n = hr.shape[0]
        target = torch.cat([torch.ones(n), torch.zeros(n)]).to(logits.device)
        d_loss = F.binary_cross_entropy_with_logits(logits, target)
        _backward(nets, d_loss, nets.opt_d, "discriminator", step)
        parts["d_loss"] = float(d_loss.detach())
        parts["d_real"] = float(torch.sigmoid(logits[:n].detach()).mean())
    parts["total"] = float(total.detach())
    return parts


@torch.no_grad()
def _super_resolve(nets: _Nets, hr: torch.Tensor, batch: int = 8) -> torch.Tensor:
    nets.g_module.eval()
    outs = []
    for chunk in hr.split(batch):
        with nets.autocast():
            outs.append(nets.g_module(nets.prep(downscale(chunk))).float().clamp(0, 1).cpu())
    return torch.cat(outs)


# ----------------------------------------------------------------------------------------------- the run


def _read_config(out: Path) -> tuple[Path, SRConfig]:
    path = out / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
        return Path(data.pop("patches_dir")), SRConfig.from_dict(data)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no such run config") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{path}: not an SR run config ({exc})") from None


def _resume_decision(out: Path, cfg: SRConfig) -> bool:
    """Continue (True) or start (False), as the autoencoder trainer decides (:func:`aeutils.training.runs.resume_decision`)."""
    last = out / "last.pt"
    resume = cfg.resume
    if resume == "auto":
        if last.exists():
            if not (out / CONFIG_NAME).exists():
                raise TrainingError(f"{out}: holds a run without {CONFIG_NAME}; pass --resume to continue it, or choose another --out")
            diff = _read_config(out)[1].differences(cfg)
            if diff:
                raise TrainingError(f"{out}: already holds a run with other settings ({'; '.join(diff)}); pass "
                                    f"--resume to continue it with these, or choose another --out")
        resume = last.exists()
    if last.exists() and not resume:
        raise TrainingError(f"{out}: already holds a run (last.pt); pass --resume to continue it or choose another --out")
    if resume and not last.exists():
        raise TrainingError(f"{last}: nothing to resume (no last.pt in the run folder)")
    return bool(resume)


def _read_rows(path: Path, upto_step: int) -> list[dict[str, Any]]:
    from aeutils.training.logs import _number

    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return [r for r in rows if int(r["step"]) <= upto_step]


def _judge(cfg: SRConfig) -> str:
    """The judge best.pt is chosen by: ``select`` over the GAN phase, PSNR where there is none."""
    return cfg.select if cfg.gan_steps else "psnr"


def _better(judge: str, new: float, old: float) -> bool:
    from aeutils.metrics.judges import LOWER_IS_BETTER

    if not math.isfinite(new):
        return False
    return new < old if judge in LOWER_IS_BETTER else new > old


def _speed(cfg: SRConfig, nets_args: tuple[Any, int], device: torch.device, remaining: int, verbose: bool) -> Choice:
    """The speed options: the CPU probe on the generator's pixel step (as the autoencoder trainer's)."""
    g_cfg, _ = nets_args

    def make_step(choice: Choice) -> Any:
        g = Generator(g_cfg).to(device)
        torch.nn.init.normal_(g.up[-1].weight, std=1e-3)
        if choice.channels_last:
            g.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(g.parameters(), lr=1e-4)

        def step(hr: torch.Tensor) -> torch.Tensor:
            x = hr.to(device)
            x = x.contiguous(memory_format=torch.channels_last) if choice.channels_last else x
            with torch.autocast(device.type, dtype=_amp_dtype(device), enabled=choice.amp):
                y = g(downscale(x))
            loss = F.mse_loss(y.float(), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.detach()

        return step

    return training_choice(make_step, (cfg.batch_size, 3, cfg.hr_size, cfg.hr_size), device,
                           channels_last=cfg.channels_last, amp=cfg.amp, expected_steps=remaining,
                           time_budget=cfg.time_budget, verbose=verbose)


def train_srgan(patches_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], config: SRConfig | None = None,
                **overrides: Any) -> SRTrainResult:
    """Train an SRGAN on the HR patches in ``patches_dir`` (an ``extract`` output or image folder) into the
    run folder ``out_dir`` (see the module docstring); ``config`` an :class:`SRConfig`, ``overrides`` its
    fields as keywords. Rerunning the same call continues the run; a finished one returns at once.

    Raises :class:`TrainingError` for no data, patches smaller than the crop, an existing different run,
    an unavailable content loss, or a NaN/inf loss (the last good ``last.pt`` is kept)."""
    from aeutils.training.distributed import rank_device, setup_process_group
    from aeutils.training.runs import run_folder_lock

    started = time.perf_counter()
    cfg = (config or SRConfig()).replace(**overrides) if overrides else (config or SRConfig())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    patches_dir, out = Path(patches_dir), Path(out_dir)
    resume = _resume_decision(out, cfg)  # refused before anything is read or written
    device = rank_device(cfg.device)
    rank, world, own = setup_process_group(device)
    try:
        with run_folder_lock(out, rank):  # one writer per run folder, as the autoencoder's train
            return _run(cfg, patches_dir, out, device, rank, world, resume, started)
    finally:
        if own and dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg: SRConfig, patches_dir: Path, out: Path, device: torch.device, rank: int, world: int, resume: bool,
         started: float) -> SRTrainResult:
    verbose = cfg.verbose and rank == 0
    ckpt = load_generator(out / "last.pt", "cpu") if resume else None
    ts = ckpt.train_state if ckpt is not None else {}
    if ckpt is not None and not ts:
        raise TrainingError(f"{out / 'last.pt'}: has no training state (a generator-only checkpoint cannot be resumed)")
    done = int(ts.get("step", 0))
    if ckpt is not None and done >= cfg.total_steps:
        if verbose:
            print(f"aeutils sr train: {out} is finished ({done}/{cfg.total_steps} steps): nothing to do", flush=True)
        return SRTrainResult(out, done, "nothing_to_do", float(ts.get("best", math.nan)),
                             time.perf_counter() - started, _read_rows(out / LOG_NAME, done))
    train_ds, hr_val = _hr_datasets(patches_dir, cfg)
    g_cfg, d_ch = cfg.sizes(device.type)
    if ckpt is not None:
        g_cfg, d_ch = ckpt.config, int(ckpt.meta["train_args"]["d_channels"])
        speed = Choice.from_dict(ckpt.meta["train_args"]["speed"])
    else:
        speed = _speed(cfg, (g_cfg, d_ch), device, cfg.total_steps, verbose)
    seed_everything(cfg.seed)
    nets = _Nets(cfg, device, speed, g_cfg, d_ch)
    content = content_loss(cfg)
    if content is not None:
        content = content.to(device)
        if getattr(content, "speed", "") is None:  # a per-process probe could switch it mid-run: resume must not differ
            content.speed = speed.name
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * rank)
    if ckpt is None and cfg.init:
        _load_init(nets, cfg.init, g_cfg)
    if ckpt is not None:
        nets.load(ts, ckpt.model.state_dict())
        gen.set_state(ts["sampler"])
        cw = float(ts["content_weight"])
        best, best_psnr = float(ts["best"]), float(ts["best_psnr"])
        history = _read_rows(out / LOG_NAME, done)
    else:
        cw = _content_weight(cfg, content, hr_val if len(hr_val) else _batch(train_ds, min(16, len(train_ds)), gen))
        from aeutils.metrics.judges import LOWER_IS_BETTER

        best = math.inf if _judge(cfg) in LOWER_IS_BETTER else -math.inf
        best_psnr, history = -math.inf, []
    meta = {"train_args": {"patches_dir": str(patches_dir), "config": cfg.to_dict(), "d_channels": d_ch,
                           "speed": speed.to_dict(), "content_weight": cw, "device": str(device), "world_size": world,
                           "n_train": len(train_ds), "n_val": len(hr_val)}}
    judges = None
    writer = None
    if rank == 0:
        from aeutils.metrics.judges import Judges

        judges = Judges() if len(hr_val) else None
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / CONFIG_NAME, json.dumps({"patches_dir": str(patches_dir), **cfg.to_dict()}, indent=2) + "\n")
        from aeutils.training.logs import open_writer

        writer = open_writer(out, done)
        if verbose:
            print(f"aeutils sr train: {len(train_ds)} training / {len(hr_val)} validation patches, "
                  f"{cfg.pretrain_steps} pixel + {cfg.gan_steps} GAN steps, batch {cfg.batch_size}x{world}, "
                  f"HR {cfg.hr_size} px, generator {g_cfg.n_blocks} blocks x {g_cfg.channels} ch, content "
                  f"{cfg.content} (weight {cw:.4g}), adversarial {cfg.adversarial:g}, device {device}, "
                  f"speed {speed.name} ({speed.source})", flush=True)
    # the RNG streams the steps draw from, set last (building the judges, the writer... draws numbers too)
    if ckpt is not None:
        set_rng_state(ts["rng"])
    else:
        seed_everything(cfg.seed + 1000 * rank + 1)
    state = _State(cfg, out, rank, nets, content, cw, judges, writer, hr_val, meta, history, best, best_psnr, gen)
    stopped = state.loop(train_ds, gen, done, started)
    if writer is not None:
        writer.close()
    return SRTrainResult(out, state.step, stopped, state.best, time.perf_counter() - started, state.history)


def _load_init(nets: _Nets, path: str, g_cfg: Any) -> None:
    """Start the generator from the checkpoint ``path`` (``SRConfig.init``); TrainingError if its size differs."""
    init = load_generator(path, "cpu")
    if init.config != g_cfg:
        raise TrainingError(f"{path}: --init generator is {init.config.n_blocks} blocks x {init.config.channels} ch, "
                            f"this run's is {g_cfg.n_blocks} x {g_cfg.channels}")
    nets.g_module.load_state_dict(init.model.state_dict())


def _content_weight(cfg: SRConfig, content: nn.Module | None, hr: torch.Tensor) -> float:
    if content is None:
        return 0.0
    if cfg.content_weight is not None:
        return float(cfg.content_weight)
    from aeutils.sr.bench import matched_weight

    where = next(iter([*content.parameters(), *content.buffers()]), torch.zeros(())).device  # the loss stays put
    return float(matched_weight(content, hr[:16].float().to(where)))


@dataclass
class _State:
    cfg: SRConfig
    out: Path
    rank: int
    nets: _Nets
    content: nn.Module | None
    cw: float
    judges: Any
    writer: Any
    hr_val: torch.Tensor
    meta: dict[str, Any]
    history: list[dict[str, Any]]
    best: float
    best_psnr: float
    gen: torch.Generator
    step: int = 0

    def loop(self, train_ds: Any, gen: torch.Generator, done: int, started: float) -> str:
        cfg, nets = self.cfg, self.nets
        self.step = done
        stop_at = min(cfg.total_steps, cfg.max_steps) if cfg.max_steps else cfg.total_steps
        bar = None
        if cfg.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.total_steps, initial=done, desc="sr train", dynamic_ncols=True, leave=False)
        sums: dict[str, float] = {}
        n, t0 = 0, time.perf_counter()
        stopped = "done"
        try:
            while self.step < stop_at:
                lr = nets.set_lr(self.step)
                hr = _batch(train_ds, cfg.batch_size, gen)
                try:
                    parts = _train_step(nets, hr, self.step, self.content, self.cw)
                except TrainingError as exc:
                    raise TrainingError(f"{exc}: training stopped; the last good checkpoint {self.out / 'last.pt'} "
                                        f"is kept. Lower --lr / --pretrain-lr") from None
                self.step += 1
                n += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(phase="pixel" if self.step <= cfg.pretrain_steps else "gan", pixel=f"{parts['pixel']:.4g}")
                if self.writer is not None and self.step % 10 == 0:
                    for k, v in parts.items():
                        self.writer.add_scalar(f"train/{k}", v, self.step)
                    self.writer.add_scalar("train/lr", lr, self.step)
                budget_over = cfg.time_budget is not None and time.perf_counter() - started >= cfg.time_budget
                at_end = self.step in (cfg.pretrain_steps, cfg.total_steps) or self.step == stop_at
                if self.step % cfg.val_every == 0 or at_end or budget_over:
                    self._validate_and_save(sums, n, time.perf_counter() - t0, lr)
                    sums, n, t0 = {}, 0, time.perf_counter()
                if budget_over and self.step < stop_at:
                    stopped = "time_budget"
                    break
            else:
                stopped = "done" if self.step >= cfg.total_steps else "max_steps"
        finally:
            if bar is not None:
                bar.close()
        return stopped

    def _validate_and_save(self, sums: dict[str, float], n: int, seconds: float, lr: float) -> None:
        if self.nets.ddp:
            dist.barrier()
        if self.rank != 0:
            return
        cfg = self.cfg
        phase = "pixel" if self.step <= cfg.pretrain_steps else "gan"
        row: dict[str, Any] = {"step": self.step, "phase": phase, "lr": lr}
        row.update({f"train_{k}": v / max(1, n) for k, v in sums.items()})
        row["images_per_s"] = n * cfg.batch_size / max(seconds, 1e-9)
        v0 = time.perf_counter()
        scores: dict[str, float] = {}
        if self.judges is not None:
            sr = _super_resolve(self.nets, self.hr_val)
            per = self.judges(sr, self.hr_val)
            scores = {k: float(np.mean(v)) for k, v in per.items()}
            row.update({f"val_{k}": v for k, v in scores.items()})
        row["val_seconds"] = time.perf_counter() - v0
        g = self.nets.g_module
        # pixel.pt: pretraining's best validation PSNR (no validation patches: its latest generator, as best.pt)
        improved_pixel = phase == "pixel" and (self.judges is None or scores.get("psnr", -math.inf) > self.best_psnr)
        if improved_pixel:
            self.best_psnr = scores.get("psnr", self.best_psnr)
            save_generator(self.out / "pixel.pt", g, meta={**self.meta, "step": self.step, "metrics": scores, "role": "pixel"})
        # best.pt: the GAN phase's best by the judge (pretraining's by PSNR where there is no GAN phase)
        judge = _judge(cfg)
        in_scope = phase == "gan" or not cfg.gan_steps
        # no validation patches: best.pt is the latest generator of its phase
        improved = in_scope and (self.judges is None or _better(judge, scores.get(judge, math.nan), self.best))
        if improved:
            self.best = scores.get(judge, math.nan)
            save_generator(self.out / "best.pt", g, meta={**self.meta, "step": self.step, "metrics": scores,
                                                             "role": "best", "judge": judge})
        row["best"] = int(bool(improved))
        self.history.append(row)
        from aeutils.training.logs import write_log

        write_log(self.out / LOG_NAME, self.history)
        ts = {**self.nets.state(), "step": self.step, "sampler": self.gen.get_state(), "rng": rng_state(),
              "content_weight": self.cw, "best": self.best, "best_psnr": self.best_psnr}
        save_generator(self.out / "last.pt", g, meta={**self.meta, "step": self.step, "metrics": scores}, train_state=ts)
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step",):
                    self.writer.add_scalar(f"val/{k}" if k.startswith("val_") else f"epoch/{k}", v, self.step)
            self.writer.flush()
        if cfg.verbose:
            msg = ", ".join(f"{k} {scores[k]:.4g}" for k in ("psnr", "ssim", "haarpsi", "stlpips") if k in scores)
            print(f"step {self.step}/{cfg.total_steps} ({phase}): {msg}, {row['images_per_s']:.1f} img/s"
                  f"{' (best)' if improved else ''}", flush=True)
