"""How good is the 1x46x46 encoding? The shipped autoencoder against simple baselines, held-out tissue.

On held-out 181x181 RGB patches of each bundled slide (``aeutils.data.sample_patches(split="test",
slide=i)``: the lower half of the slide's held-out bottom 25 %, never trained on and never used for a
choice; ``--split val`` scores the validation half instead), it compares, in PSNR (dB) and SSIM
(``aeutils.metrics``), per slide:

* the autoencoder: 181x181x3 -> 1x46x46 encoding -> 181x181x3, with the encoding kept as float32
  (2116 numbers = 8464 bytes) and rounded to float16 (4232 bytes);
* bicubic from 3x27x27 (2187 numbers: about the same count as the 1x46x46 encoding);
* bicubic from 3x46x46 (6348 numbers: three times as many as the encoding); thumbnails stored as
  uint8, so their bytes equal their numbers;
* JPEG (Pillow, 4:2:0, optimised Huffman tables) at the encoding's byte budgets: per patch, the
  quality whose file is the largest that fits in 8464 bytes (float32 latent) / 4232 bytes (float16).

Downsampling is antialiased bicubic (``aeutils.sr.degrade.bicubic_down``),
upsampling plain bicubic, clamped to [0, 1]. Prints a markdown table ready for the README.

    python bench/quality.py                      # the shipped model, 24 test patches per bundled slide
    python bench/quality.py --checkpoint runs/ae/best.pt --split val
    python bench/quality.py --smoke --checkpoint /tmp/random.pt   # seconds (CI)
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PATCH = 181  #: patch side in pixels (level 0 of the sample slide, 0.499 um/px)


def bicubic_baseline(images: torch.Tensor, side: int) -> torch.Tensor:
    """Downsample Nx3xHxW images in [0, 1] to Nx3x``side``x``side`` (antialiased bicubic), store that
    thumbnail as 8-bit (3*side*side bytes), and upsample back to HxW (bicubic), clamped to [0, 1]:
    what a ``side``-pixel thumbnail can reconstruct."""
    from aeutils.sr.degrade import bicubic_down, bicubic_up

    small = (bicubic_down(images, (side, side)) * 255).round() / 255
    return bicubic_up(small, size=tuple(images.shape[-2:]))


def jpeg_at_budget(image: np.ndarray, budget: int) -> tuple[np.ndarray, int, int]:
    """Encode one HxWx3 uint8 RGB image as JPEG at the quality (1..95) whose file is the largest
    that fits in ``budget`` bytes. Returns (decoded HxWx3 uint8, quality, bytes). If even quality 1
    does not fit, quality 1 is returned (its size then exceeds the budget: check the bytes)."""
    from PIL import Image

    pil = Image.fromarray(image)

    def encode(q: int) -> bytes:
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=q, optimize=True)
        return buf.getvalue()

    # file size is nearly but not strictly monotonic in quality: scan every quality, keep the largest fit
    best_q, best = 1, encode(1)
    for q in range(2, 96):
        data = encode(q)
        if len(data) <= budget and (len(best) > budget or len(data) > len(best)):
            best_q, best = q, data
    decoded = np.asarray(Image.open(io.BytesIO(best)).convert("RGB"))
    return decoded, best_q, len(best)


def jpeg_batch(images: torch.Tensor, budget: int) -> tuple[torch.Tensor, float, float]:
    """:func:`jpeg_at_budget` over Nx3xHxW images in [0, 1] (quantised to uint8 first).
    Returns (decoded Nx3xHxW in [0, 1], mean quality, mean bytes)."""
    arrays = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out, qualities, sizes = [], [], []
    for a in arrays:
        dec, q, n = jpeg_at_budget(a, budget)
        out.append(torch.from_numpy(dec.copy()))
        qualities.append(q)
        sizes.append(n)
    decoded = torch.stack(out).permute(0, 3, 1, 2).float() / 255.0
    return decoded, float(np.mean(qualities)), float(np.mean(sizes))


@dataclass
class Row:
    method: str
    size: str  #: numbers per patch / bytes
    psnr: torch.Tensor  #: per patch, dB
    ssim: torch.Tensor  #: per patch


def _score(method: str, size: str, pred: torch.Tensor, target: torch.Tensor) -> Row:
    from aeutils.metrics import psnr, ssim

    return Row(method, size, psnr(pred, target).cpu(), ssim(pred, target).cpu())


@torch.no_grad()
def reconstruct(model: torch.nn.Module, images: torch.Tensor, batch: int = 32, half_latent: bool = False) -> torch.Tensor:
    """The autoencoder's reconstruction of Nx3xHxW images in [0, 1], in batches; ``half_latent``
    rounds the encoding to float16 before decoding (what storing it in 2 bytes per number costs)."""
    out = []
    for chunk in images.split(batch):
        z = model.encode(chunk)
        if half_latent:
            z = z.half().float()
        out.append(model.decode(z))
    return torch.cat(out)


def evaluate(model: torch.nn.Module, images: torch.Tensor) -> tuple[list[Row], dict[str, float]]:
    """Score every method on ``images`` (Nx3x181x181 in [0, 1]); returns the rows and JPEG details."""
    from aeutils.model import latent_size

    side = images.shape[-1]
    z = latent_size(side)
    n_latent = model.config.latent_channels * z * z
    rows = [
        _score("autoencoder, float32 encoding", f"{n_latent} / {4 * n_latent}", reconstruct(model, images), images),
        _score(
            "autoencoder, float16 encoding",
            f"{n_latent} / {2 * n_latent}",
            reconstruct(model, images, half_latent=True),
            images,
        ),
    ]
    small = 27 if side == PATCH else max(3, round((n_latent / 3) ** 0.5))
    for s in (small, z):
        rows.append(_score(f"bicubic from 3x{s}x{s}", f"{3 * s * s} / {3 * s * s} (uint8)", bicubic_baseline(images, s), images))
    details: dict[str, float] = {}
    for nbytes in (4 * n_latent, 2 * n_latent):
        decoded, q, mean_bytes = jpeg_batch(images, nbytes)
        rows.append(_score(f"JPEG <= {nbytes} B (mean q {q:.0f})", f"- / {mean_bytes:.0f}", decoded, images))
        details[f"jpeg{nbytes}_quality"] = q
        details[f"jpeg{nbytes}_bytes"] = mean_bytes
    return rows, details


def markdown(rows: list[Row]) -> str:
    """The table: method | numbers per patch / bytes | PSNR mean (dB) | SSIM mean."""
    lines = [
        "| method | numbers per patch / bytes | PSNR mean (dB) | SSIM mean |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.method} | {r.size} | {r.psnr.mean():.2f} | {r.ssim.mean():.4f} |")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict:
    """Run the bench (command-line arguments ``argv``), print its tables, and return the numbers:
    ``{"checkpoint": path, "split": "test"|"val", "slides": {slide: {method: {"size", "psnr", "ssim"}}},
    "beats": {slide: bool}, "beats_all": bool}`` (PSNR in dB and SSIM as means over the patches)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="an aeutils checkpoint (default: the shipped model)")
    parser.add_argument("--n", type=int, default=24, help="held-out patches per slide (default 24)")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="test: reported numbers (default); val: for choices (aeutils.data three-role split)")
    parser.add_argument("--seed", type=int, default=0, help="which held-out patches (sample_patches seed)")
    parser.add_argument("--smoke", action="store_true", help="2 patches per slide: a seconds-long check of the script")
    args = parser.parse_args(argv)

    from aeutils.checkpoint import load_model, pretrained_path
    from aeutils.data import sample_patches
    from aeutils.sample import SAMPLES

    torch.manual_seed(0)
    n = 2 if args.smoke else args.n
    path = args.checkpoint or pretrained_path()
    model = load_model(path).eval()
    print(f"checkpoint: {path}")
    result: dict = {"checkpoint": str(path), "split": args.split, "slides": {}, "beats": {}}
    for slide, info in enumerate(SAMPLES):
        t0 = time.perf_counter()
        images = sample_patches(n, PATCH, split=args.split, seed=args.seed, slide=slide)
        rows, _ = evaluate(model, images)
        print(f"\n{info.name}: {len(images)} held-out patches x 3x{PATCH}x{PATCH} ({args.split} region), "
              f"{time.perf_counter() - t0:.1f} s\n")
        print(markdown(rows))
        result["slides"][info.name] = {
            r.method: {"size": r.size, "psnr": float(r.psnr.mean()), "ssim": float(r.ssim.mean())} for r in rows
        }
        ae, bic = rows[0], next(r for r in rows if r.method == "bicubic from 3x46x46")
        beats = bool(ae.psnr.mean() > bic.psnr.mean() and ae.ssim.mean() > bic.ssim.mean())
        result["beats"][info.name] = beats
        print(f"\nautoencoder (1x46x46) beats bicubic from 3x46x46 in PSNR and SSIM on {info.name}: "
              f"{'yes' if beats else 'no'} (PSNR {ae.psnr.mean() - bic.psnr.mean():+.2f} dB, "
              f"SSIM {ae.ssim.mean() - bic.ssim.mean():+.4f})")
    result["beats_all"] = all(result["beats"].values())
    print(f"\nbeats bicubic from 3x46x46 on every bundled slide: {'yes' if result['beats_all'] else 'no'}")
    return result


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
