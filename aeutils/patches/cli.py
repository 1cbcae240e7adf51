"""``python -m aeutils extract``: the options of :func:`~aeutils.patches.extraction.extract` as flags.

Each failing slide prints one ``error: <file>: <problem>`` line; the exit code is 2 if any failed.
Never imports torch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aeutils.errors import AeutilsError, PatchError
from aeutils.manifest import read_manifest
from aeutils.patches.extraction import extract
from aeutils.patches.grid import parse_shard, shard_of
from aeutils.scale import add_scale_arguments

__all__ = ["add_cli_arguments", "run_cli"]


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m aeutils extract``."""
    parser.add_argument("slides", nargs="+", metavar="SLIDE", help="whole-slide images (any OpenSlide format)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (PNG tree + manifest.csv)")
    parser.add_argument("--patch-size", type=int, default=181, help="patch side in pixels (default 181)")
    add_scale_arguments(parser)
    parser.add_argument("--stride", type=int, default=None, help="grid step in patch pixels (default: patch size)")
    parser.add_argument("--min-tissue", type=float, default=0.5,
                        help="keep cells with tissue fraction >= this (0.5; of the mask with --mask/--mask-dir)")
    masks = parser.add_mutually_exclusive_group()
    masks.add_argument("--mask", type=Path, default=None, metavar="PATH",
                       help="your own tissue mask for the one SLIDE instead of the automatic one: a PNG/TIFF "
                            "covering the whole slide at any resolution, nonzero = tissue")
    masks.add_argument("--mask-dir", type=Path, default=None, metavar="DIR",
                       help="a folder of masks named <slide stem>.png (or .tif/.tiff), one per SLIDE")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="ASAP/CAMELYON16 XML file, or a folder of <slide stem>.xml")
    parser.add_argument("--keep", choices=("tumour", "normal"), default=None,
                        help="keep only tumour or only normal patches (needs --annotations)")
    parser.add_argument("--max-patches", type=int, default=None, metavar="N",
                        help="at most N patches per slide: a seeded uniform sample of its tissue cells, "
                             "the same on every rerun")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-patches sample (0)")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="only the slides of shard K of N (split by name; e.g. --shard $SLURM_ARRAY_TASK_ID/N "
                             "with --array=1-N); writes manifest.shard-K-of-N.csv: combine with "
                             "'python -m aeutils manifest merge OUT', or rerun without --shard")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a slide's patches made here earlier with other settings (default: refuse)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _mask_option(args: argparse.Namespace) -> Path | None:
    """``--mask`` (a file, one slide) or ``--mask-dir`` (a folder); raises :class:`PatchError` for a mix-up."""
    mask, mask_dir = getattr(args, "mask", None), getattr(args, "mask_dir", None)
    if mask is not None:
        if mask.is_dir():
            raise PatchError(f"{mask}: --mask is a folder; give a folder of <slide stem>.png masks as --mask-dir")
        if len(args.slides) > 1:
            raise PatchError(f"{mask}: --mask is one slide's mask, given for {len(args.slides)} slides; "
                             f"use --mask-dir DIR with <slide stem>.png masks")
        return mask
    if mask_dir is not None and not mask_dir.is_dir():
        raise PatchError(f"{mask_dir}: --mask-dir is not a folder")
    return mask_dir


def run_cli(args: argparse.Namespace) -> int:
    """Run ``extract``; each failing slide prints one ``error: <file>: <problem>`` line. Exit 2 if any failed."""
    errors: list[AeutilsError] = []

    def report(err: AeutilsError) -> None:
        errors.append(err)
        print(f"error: {err}", file=sys.stderr, flush=True)

    manifest = extract(
        args.slides, args.out, patch_size=args.patch_size, level=args.level, mpp=args.mpp,
        assume_mpp=args.assume_mpp, resample_filter=args.resample_filter, stride=args.stride, min_tissue=args.min_tissue, annotations=args.annotations,
        mask=_mask_option(args), keep=args.keep, max_patches=args.max_patches, seed=args.seed, shard=args.shard,
        overwrite=args.overwrite, workers=args.workers, progress=not args.quiet, on_error=report,
    )
    rows = read_manifest(manifest)
    total = len(args.slides)
    if args.shard:
        k, n = parse_shard(args.shard)  # type: ignore[misc]
        total = len({Path(p).stem for p in args.slides if shard_of(Path(p).stem, n) == k})
        where = f" of shard {k}/{n}"
    else:
        where = ""
    ok = total - len(errors)
    print(f"{len(rows)} patches in {manifest} ({max(ok, 0)} of {total} slides{where} done)")
    return 2 if errors else 0
