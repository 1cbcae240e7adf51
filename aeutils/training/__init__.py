"""Train the autoencoder on extracted patches: CPU, one GPU, or several GPUs under ``torchrun``.

    python -m aeutils train PATCHES_DIR --out RUN_DIR [--epochs 10] [--batch-size 16] [--crop 181]
        [--lr 2e-3] [--config n_blocks=2 widths=32,32,8] [--ssim 0.2] [--time-budget 45m] [--resume]
    # rerunning the same command continues the run (after Ctrl-C or a --time-budget stop; a finished
    # run returns at once, its folder untouched); --resume continues it with changed settings (e.g.
    # more --epochs) and is needed for a folder without config.json; --val-limit 0: validate on all
    torchrun --nproc_per_node 4 -m aeutils train PATCHES_DIR --out RUN_DIR ...   # DDP

The same as a function: :func:`train`. The pieces are reusable: :class:`ReconstructionLoss` (MSE + optional L1
/ SSIM / VGG terms), :func:`make_train_step` (one optimisation step with channels_last / mixed precision) and
:class:`Trainer` (model + optimiser + scaler + LR schedule, ``.step(batch)``, ``.evaluate(...)``,
``.state_dict()`` for exact resume). ``callbacks`` of :func:`train` see every epoch (:class:`TrainEvent`).
Every patch is checked before the first epoch (validation ones decoded, training ones structure-checked), so a
corrupt file costs no training.

The knobs live in one :class:`TrainConfig` (validated when it is made; the CLI builds the same object from its
flags): ``train(patches, out, TrainConfig(epochs=130, ...))``, or keywords ``train(patches, out,
epochs=130)``. Run folder: ``config.json`` (the TrainConfig and the patch folder: the run is reproducible from
it), ``last.pt`` and ``best.pt`` (atomic :mod:`aeutils.checkpoint` files with the training state: optimiser,
grad scaler, LR scheduler, epoch, step, torch/numpy/python RNG), ``log.csv`` (one row per epoch, rewritten
atomically), ``tensorboard/`` (``tensorboard --logdir RUN_DIR``).

Speed: on CUDA, bf16 autocast (fp16 + GradScaler where bf16 is unsupported), channels_last, pinned memory and
DataLoader workers. On the CPU the right options flip between machines (channels_last + bf16 autocast 2.7x
faster than fp32 on a Xeon with AMX-BF16; 0.74x and 0.05x on an AVX2-only EPYC), so ``--channels-last auto
--amp auto`` (the default) decides by measurement once per run (:func:`choose_speed`, :mod:`aeutils.speed`): a
few timed steps of fp32, channels_last, bf16 and both on the run's own model, crop and batch, one printed
line, the choice stored in the checkpoints' ``train_args["speed"]`` and the log's ``speed`` column and reused
on ``--resume``. The probe is skipped (fp32) where it would cost more than 5 % of the run. ``on``/``off``
force an option (``$MSCOPY_CPU_SPEED`` forces a candidate). bf16 autocast keeps fp32 master weights. On a
shared or small CPU, one thread per process (``OMP_NUM_THREADS=1``) can be much faster than contending
threads.

Exactness: on the CPU, a resumed run reproduces an uninterrupted one bit for bit (shuffling is seeded per
epoch, RNG states are restored). A ``--max-steps`` / ``--time-budget`` stop inside an epoch does not finish it:
``last.pt`` keeps the position (steps into the epoch, their loss sum, the RNG states; no validation, no log row)
and the rerun trains exactly the batches that were left, so the same command ends where an uninterrupted run
ends (with DataLoader workers the batches already trained on are loaded again and dropped, to replay each
worker's augmentations). Under ``torchrun`` rank 0's clock decides a time-budget stop for every rank.

Layout, one idea a module (the names above are importable from here)::

    config       TrainConfig (every knob, checked once), parse_config (--config), parse_duration
    step         ReconstructionLoss, make_train_step (one optimisation step), choose_speed
    rng          the RNG states as plain data (exact resume)
    trainer      Trainer: model + AdamW + scaler + LR schedule, state_dict for resume
    datasets     the run's datasets, every image checked up front, per-epoch loaders
    distributed  torchrun: this rank's device, the process group, what ranks share
    runs         the run folder: config.json, last.pt / best.pt, start / continue / refuse, find_runs,
                 pick_checkpoint (notebook 03's run only if not worse than the shipped model)
    logs         log.csv, TensorBoard, the printed lines
    loop         train(): the run, step by step
    cli          python -m aeutils train
"""
from __future__ import annotations

from aeutils.training.config import RUNTIME_FIELDS, TrainConfig, parse_config, parse_duration
from aeutils.training.step import ReconstructionLoss, amp_dtype_for, choose_speed, make_train_step
from aeutils.training.rng import rng_state, seed_everything, set_rng_state
from aeutils.training.trainer import Trainer
from aeutils.training.runs import (
    BEST_NAME, CONFIG_NAME, LAST_NAME, find_runs, pick_checkpoint, read_run_config, validation_psnr, write_run_config,
)
from aeutils.training.logs import LOG_NAME
from aeutils.training.loop import TrainEvent, TrainResult, train
from aeutils.training.cli import add_cli_arguments, config_from_args, run_cli

__all__ = [
    "TrainConfig",
    "TrainEvent",
    "ReconstructionLoss",
    "make_train_step",
    "amp_dtype_for",
    "choose_speed",
    "Trainer",
    "TrainResult",
    "train",
    "parse_config",
    "parse_duration",
    "config_from_args",
    "read_run_config",
    "write_run_config",
    "find_runs",
    "pick_checkpoint",
    "validation_psnr",
    "rng_state",
    "set_rng_state",
    "seed_everything",
    "RUNTIME_FIELDS",
    "CONFIG_NAME",
    "LAST_NAME",
    "BEST_NAME",
    "LOG_NAME",
]
