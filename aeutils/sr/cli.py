"""``python -m aeutils sr {train,apply}``: SRGAN training on extracted patches, and x4 super-resolution of
whole slides or image folders with a trained (or the shipped) generator."""
from __future__ import annotations

import argparse
from dataclasses import fields

__all__ = ["add_cli_arguments", "run_cli", "config_from_args"]


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from aeutils.sr.config import CONTENT_LOSSES, JUDGE_CHOICES, SRConfig

    d = {f.name: f.default for f in fields(SRConfig)}
    p.add_argument("patches_dir", metavar="PATCHES", help="extract output (manifest.csv) or folder of HR images")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder: last.pt, best.pt, pixel.pt, log.csv, tensorboard/")
    p.add_argument("--preset", default=d["preset"], choices=("auto", "paper", "cpu", "tiny"),
                   help="network size: paper (16 blocks x 64 ch), cpu (6 x 32), auto: paper on CUDA, cpu elsewhere")
    p.add_argument("--n-blocks", type=int, default=None, help="generator residual blocks (overrides the preset)")
    p.add_argument("--channels", type=int, default=None, help="generator channels (overrides the preset)")
    p.add_argument("--d-channels", type=int, default=None, help="discriminator first width (overrides the preset)")
    p.add_argument("--hr-size", type=int, default=d["hr_size"], help=f"HR crop side, multiple of 4 (default {d['hr_size']})")
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--pretrain-steps", type=int, default=d["pretrain_steps"], help="pixel-loss (MSE) steps first")
    p.add_argument("--gan-steps", type=int, default=d["gan_steps"], help="GAN-phase steps after pretraining")
    p.add_argument("--pretrain-lr", type=float, default=d["pretrain_lr"])
    p.add_argument("--lr", type=float, default=d["lr"], help="GAN-phase Adam LR (G and D; 10x lower from half the phase)")
    p.add_argument("--pixel", type=float, default=d["pixel"], help="MSE weight")
    p.add_argument("--content", default=d["content"], choices=CONTENT_LOSSES, help="content loss (default encoding: the histology encoder)")
    p.add_argument("--content-weight", type=float, default=None, help="default: matched to pixel MSE on bicubic upsamples")
    p.add_argument("--adversarial", type=float, default=d["adversarial"], help="adversarial weight (SRGAN's 1e-3)")
    p.add_argument("--encoder-checkpoint", default=None, metavar="PT", help="autoencoder for --content encoding/random")
    p.add_argument("--vgg19-weights", default=None, metavar="PTH", help="torchvision VGG19 weights file for --content vgg19")
    p.add_argument("--init", default=None, metavar="PT", help="start the generator from this checkpoint (e.g. a run's "
                   "pixel.pt; with --pretrain-steps 0, GAN runs share one pixel pretraining)")
    p.add_argument("--select", default=d["select"], choices=JUDGE_CHOICES, help="validation judge choosing best.pt")
    p.add_argument("--val-every", type=int, default=d["val_every"], help="validate and write last.pt every N steps")
    p.add_argument("--val-limit", type=int, default=d["val_limit"], help="validation patches (0: all)")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in total")
    p.add_argument("--time-budget", default=None, help="stop after this long: seconds, or 45m, 1.5h")
    p.add_argument("--resume", action="store_true", help="continue RUN/last.pt also with changed settings")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _apply_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="SLIDE", help="whole-slide images, or folders of PNG/JPEG images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: <slide>.sr.tiff or <NAME>.png")
    p.add_argument("--checkpoint", default=None, metavar="G.pt", help="generator checkpoint (default: the shipped one)")
    from aeutils.scale import add_scale_arguments

    add_scale_arguments(p)  # --level / --mpp / --assume-mpp: the input scale, as extract and encode (output 4x finer)
    from aeutils.sr.degrade import SLIDE_FILTER

    for action in p._actions:  # sr apply reads with the generator's training degradation unless told otherwise
        if action.dest == "resample_filter":
            action.help = (f"filter when --mpp resamples a level (default {SLIDE_FILTER}: the degradation the "
                           "generator was trained on; lanczos reads sharper, which the generator over-sharpens)")
    p.add_argument("--tile", type=int, default=128,
                   help="LR tile core side, a multiple of 64 px (default 128: larger tiles overlap less but "
                        "cover more glass around tissue; 128-384 took the same time on the bench slide)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--precision", choices=("auto", "fp32", "channels_last", "bf16", "channels_last+bf16"),
                   default="auto", help="auto: a short probe on one 64 px tile picks the fastest once the slide's tiles "
                        "make it pay (aeutils.speed; channels_last+bf16 on AMX CPUs); fp32: exact")
    p.add_argument("--all", dest="tissue_only", action="store_false",
                   help="super-resolve everything, not only the tissue (default: tissue; background stays white)")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """``sr train`` and ``sr apply``."""
    sub = parser.add_subparsers(dest="sr_command", metavar="{train,apply}", required=True)
    _train_arguments(sub.add_parser("train", help="train an SRGAN (pixel pretraining, then GAN) on extracted patches"))
    _apply_arguments(sub.add_parser("apply", help="super-resolve slides (pyramidal TIFF) or image folders (PNG) x4"))


_TRI = {"auto": None, "on": True, "off": False}


def config_from_args(args: argparse.Namespace) -> "SRConfig":  # noqa: F821
    """The :class:`~aeutils.sr.config.SRConfig` of ``sr train`` flags (no ``--resume``: "auto")."""
    from aeutils.sr.config import SRConfig

    return SRConfig(
        preset=args.preset, n_blocks=args.n_blocks, channels=args.channels, d_channels=args.d_channels,
        hr_size=args.hr_size, batch_size=args.batch_size, pretrain_steps=args.pretrain_steps, gan_steps=args.gan_steps,
        pretrain_lr=args.pretrain_lr, lr=args.lr, pixel=args.pixel, content=args.content,
        content_weight=args.content_weight, adversarial=args.adversarial, encoder_checkpoint=args.encoder_checkpoint,
        vgg19_weights=args.vgg19_weights, init=args.init, select=args.select, val_every=args.val_every, val_limit=args.val_limit,
        seed=args.seed, device=args.device, threads=args.threads, max_steps=args.max_steps,
        time_budget=args.time_budget, resume=True if args.resume else "auto", channels_last=_TRI[args.channels_last],
        amp=_TRI[args.amp], progress=args.progress,
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run ``sr train`` or ``sr apply``; exit code 0."""
    if args.sr_command == "train":
        import os

        from aeutils.sr.train import train_srgan

        r = train_srgan(args.patches_dir, args.out, config_from_args(args))
        if int(os.environ.get("RANK", "0")) == 0:
            f = r.final
            scores = ", ".join(f"{k[4:]} {f[k]:.4g}" for k in ("val_psnr", "val_haarpsi", "val_stlpips") if k in f)
            print(f"done ({r.stopped}): {r.step} steps in {r.seconds:.0f} s; last validation: {scores or 'none'}; "
                  f"generators {r.out_dir}/best.pt, pixel.pt, last.pt; logs: tensorboard --logdir {r.out_dir}")
        return 0
    from aeutils.sr.apply import run_apply

    return run_apply(args)
