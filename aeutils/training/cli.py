"""``python -m aeutils train``: its options (:func:`add_cli_arguments`), the :class:`TrainConfig` they
make (:func:`config_from_args`, the same object notebooks build) and the command (:func:`run_cli`)."""
from __future__ import annotations

import argparse
import os
from dataclasses import fields

from aeutils.training.config import TrainConfig, parse_config, parse_duration
from aeutils.training.loop import TrainResult, train
from aeutils.training.runs import BEST_NAME, LAST_NAME

__all__ = ["add_cli_arguments", "config_from_args", "run_cli"]


#: TrainConfig's field defaults: the CLI's defaults, so the two cannot drift apart
_DEFAULT = {f.name: f.default for f in fields(TrainConfig)}
_TRI = {"auto": None, "on": True, "off": False}  # --channels-last / --amp -> TrainConfig
_TRI_NAME = {v: k for k, v in _TRI.items()}


#: after the options in ``train --help``: which model the defaults train, and how the shipped one differs
EPILOG = """\
architecture: without --config, train builds the default AutoencoderConfig(): n_blocks=10
widths=64,32,8, 1,924,004 parameters, 26.3 GFLOPs per 181 px patch, the design meant for a GPU.
The shipped model (aeutils.load_model(), EncodingLoss()) is a smaller recipe, 29x fewer
FLOPs and far cheaper on a CPU (101,956 parameters, 0.90 GFLOPs per patch):
  --config n_blocks=1 widths=32,32,8 --crop 61 --batch-size 16 --lr 3e-3 --ssim 0.05
its exact commands and training log: aeutils/pretrained/README.md.
Rerun the same command to continue after Ctrl-C or --time-budget; --resume continues with
changed settings."""


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m aeutils train`` (their defaults are :class:`TrainConfig`'s), and :data:`EPILOG`."""
    d = _DEFAULT
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the epilog's lines
    parser.add_argument("patches_dir", metavar="PATCHES_DIR", help="extraction output (manifest.csv) or folder of images")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help=f"run folder: {LAST_NAME}, {BEST_NAME}, log.csv, tensorboard/")
    parser.add_argument("--epochs", type=int, default=d["epochs"], help=f"total epochs (default {d['epochs']})")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"per process (default {d['batch_size']})")
    parser.add_argument("--crop", type=int, default=d["crop"], help=f"training crop side, 4k+1 px (default {d['crop']})")
    parser.add_argument("--lr", type=float, default=d["lr"], help=f"AdamW learning rate (default {d['lr']:g})")
    parser.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                        help=f"AdamW weight decay (default {d['weight_decay']:g})")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default=d["schedule"],
                        help=f"learning rate after the warmup: cosine decay to 0 over --epochs, or constant "
                             f"(default {d['schedule']})")
    parser.add_argument("--warmup-steps", type=int, default=d["warmup_steps"],
                        help="LR warmup steps (default min(200, 5 %% of the steps))")
    parser.add_argument(
        "--config", nargs="+", action="extend", metavar="KEY=VALUE",
        help="architecture: key=value items (n_blocks=2 widths=32,32,8), a JSON object, or a JSON file "
             "(default: AutoencoderConfig(), see below)",
    )
    parser.add_argument(
        "--resume", action="store_true",
        help=f"continue RUN_DIR/{LAST_NAME}, also with changed settings (e.g. more --epochs); without it the same "
             "command continues a run whose config.json matches and refuses a different one (or one without "
             "config.json)",
    )
    parser.add_argument("--mse", type=float, default=d["mse"], help=f"MSE weight (default {d['mse']:g})")
    parser.add_argument("--l1", type=float, default=d["l1"], help=f"L1 weight (default {d['l1']:g})")
    parser.add_argument("--ssim", type=float, default=d["ssim"], help=f"(1 - SSIM) weight (default {d['ssim']:g})")
    parser.add_argument("--vgg", type=float, default=d["vgg"],
                        help=f"VGG19 content weight, needs --vgg-weights (default {d['vgg']:g})")
    parser.add_argument("--vgg-weights", default=d["vgg_weights"], metavar="PTH", help="local torchvision VGG19 weights file")
    parser.add_argument("--stain-jitter", type=float, default=d["stain_jitter"],
                        help=f"HED stain jitter strength, 0.02-0.05 mild (default {d['stain_jitter']:g}: off)")
    parser.add_argument("--device", default=d["device"], help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--workers", type=int, default=d["workers"],
                        help="DataLoader workers per process (default: from the cores this process may use)")
    parser.add_argument("--seed", type=int, default=d["seed"],
                        help=f"seeds the initial weights, shuffling and augmentation (default {d['seed']})")
    parser.add_argument("--max-steps", type=int, default=d["max_steps"],
                        help="stop after this many optimiser steps in total")
    parser.add_argument("--time-budget", default=d["time_budget"],
                        help="stop after this long: seconds, or 45m, 1.5h (also inside an epoch: rerunning the same "
                             "command continues that epoch where it stopped)")
    parser.add_argument("--val-limit", type=int, default=d["val_limit"],
                        help=f"validate on at most N patches (0: all; default {d['val_limit']})")
    parser.add_argument("--channels-last", choices=tuple(_TRI), default=_TRI_NAME[d["channels_last"]],
                        help="channels_last memory format (auto: on for CUDA; on the CPU measured once per run)")
    parser.add_argument("--amp", choices=tuple(_TRI), default=_TRI_NAME[d["amp"]],
                        help="mixed precision, bf16 autocast on the CPU (auto: on for CUDA; on the CPU measured once per run)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=d["progress"],
                        help="no progress bars (the epoch lines and log.csv stay): for log files and batch jobs")
    parser.add_argument("--log-every", type=int, default=d["log_every"], metavar="N",
                        help=f"TensorBoard step loss every N steps (default {d['log_every']})")
    parser.add_argument("--print-every", type=int, default=d["print_every"], metavar="N",
                        help="an epoch line every N epochs (default: about 20 lines; all rows are in log.csv)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of ``python -m aeutils train`` flags (no ``--resume``: ``"auto"``, so
    rerunning the same command continues its run)."""
    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, crop=args.crop, lr=args.lr, weight_decay=args.weight_decay,
        architecture=parse_config(args.config), resume=True if args.resume else "auto", mse=args.mse, l1=args.l1,
        ssim=args.ssim, vgg=args.vgg, vgg_weights=args.vgg_weights, stain_jitter=args.stain_jitter, device=args.device,
        workers=args.workers, seed=args.seed, max_steps=args.max_steps, time_budget=parse_duration(args.time_budget),
        val_limit=args.val_limit, schedule=args.schedule, warmup_steps=args.warmup_steps,
        channels_last=_TRI[args.channels_last], amp=_TRI[args.amp], progress=args.progress,
        log_every=args.log_every, print_every=args.print_every,
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run ``python -m aeutils train``; exit code 0."""
    result = train(args.patches_dir, args.out, config_from_args(args))
    if int(os.environ.get("RANK", "0")) == 0:
        print(_done_line(result))
    return 0


def _done_line(result: TrainResult) -> str:
    """The command's last line: why it stopped, epochs and steps, the last validation scores, where the
    outputs are; a stop inside an epoch says how far it got and that rerunning continues it."""
    f = result.final
    if result.epoch_steps:
        done = result.epochs_done
        where = (f"stopped ({result.stopped}) in epoch {done + 1} after {result.epoch_steps} of its "
                 f"{result.steps_per_epoch} steps: {done} finished epoch{'' if done == 1 else 's'}, "
                 f"{result.global_step} steps in {result.seconds:.0f} s; rerun the same command to continue from there")
        scores = f"; last val PSNR {f['val_psnr']:.2f} dB, SSIM {f['val_ssim']:.4f} (epoch {f['epoch']})" if f else ""
        return f"{where}{scores}; checkpoint {result.last}"
    if not f:
        return f"done ({result.stopped}): nothing to train; checkpoints in {result.out_dir}"
    return (
        f"done ({result.stopped}): {result.epochs_done} epochs, {result.global_step} steps in {result.seconds:.0f} s; "
        f"last val PSNR {f.get('val_psnr', float('nan')):.2f} dB, SSIM {f.get('val_ssim', float('nan')):.4f}; "
        f"checkpoints {result.last} and {result.best}; logs: tensorboard --logdir {result.out_dir}"
    )
