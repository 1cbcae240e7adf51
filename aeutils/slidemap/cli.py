"""``python -m aeutils encode SLIDE... --out DIR``: each slide to its encoding map, one line per slide."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aeutils.errors import AeutilsError, CheckpointError, SlideError
from aeutils.io import folder_lock, missing_reason
from aeutils.slidemap.encode import SlideMap, check_encode_options, check_out_folder, encode_slide, model_for
from aeutils.slidemap.figure import write_map_figure
from aeutils.slidemap.geometry import STRIDE
from aeutils.slidemap.stats import VIEWS


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m aeutils encode``."""
    from aeutils.scale import add_scale_arguments

    parser.add_argument("slides", nargs="+", metavar="SLIDE", help="whole-slide images (any OpenSlide format)")
    parser.add_argument("--out", required=True, type=Path, help="output folder: <slide>.encoding.tiff per slide")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="model checkpoint (default: the shipped model, or $MSCOPY_PRETRAINED)")
    add_scale_arguments(parser, recorded="the maps' resolution tags then follow it")
    parser.add_argument("--view", choices=VIEWS, default="stretch",
                        help="grey levels written: raw (min-max), stretch (percentiles), equalize (default stretch); "
                             "statistics over the whole slide's tissue")
    parser.add_argument("--percentiles", type=float, nargs=2, default=(2.0, 98.0), metavar=("LOW", "HIGH"),
                        help="percentiles of the stretch view (default 2 98)")
    parser.add_argument("--reconstruction", action="store_true",
                        help="also write <slide>.reconstruction.tiff, the decoded RGB at the input scale")
    parser.add_argument("--tile", type=int, default=768,
                        help="tile core in input px, a multiple of 256 (default 768: cache-sized on the CPU; larger on a GPU)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="tiles per forward pass (default: 1 on the CPU, as many as fit 1 GiB on a GPU)")
    parser.add_argument("--precision", choices=("auto", "fp32", "channels_last", "bf16", "channels_last+bf16"),
                        default="auto",
                        help="the encoder's arithmetic: fp32 (float32, exact and reproducible: use it for figures "
                             "and comparisons), channels_last (the same float32 maths in another memory layout), "
                             "bf16 (bfloat16 autocast: faster on CPUs with AVX512_BF16 or AMX and on GPUs; values "
                             "differ slightly from fp32), channels_last+bf16 (both); auto (default): a short timing "
                             "of these on this machine picks the fastest, only on slides with enough tissue tiles "
                             "for it to pay (aeutils.speed), else fp32")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--figure", type=Path, default=None, metavar="PNG",
                        help="also save the (first) slide's thumbnail beside its map as a PNG")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder of raw float tiles")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a slide's finished map made here with other settings (default: refuse)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def summary_line(res: SlideMap) -> str:
    """The one line printed for a finished slide: the map, its size and scale, and what this run did."""
    if res.up_to_date:
        what = "up to date"
    elif res.encoded == 0:
        what = f"all {res.tiles} tissue tiles resumed from the work folder"
    else:
        what = (f"{res.encoded} of {res.tiles} tissue tiles encoded, {res.megapixels:.1f} Mpx at "
                f"{res.mpx_per_s:.2f} Mpx/s")
    mpp = f", {res.mpp * STRIDE:.4g} um/px" if res.mpp else ""
    return (f"{res.encoding} ({res.shape[1]} x {res.shape[0]} px{mpp}; {what})"
            + (f" + {res.reconstruction}" if res.reconstruction else ""))


def run_cli(args: argparse.Namespace) -> int:
    """Encode each slide; a failing slide prints one ``error: ...`` line and the others go on (exit 2)."""
    if args.checkpoint is not None and not Path(args.checkpoint).exists():
        why = missing_reason(args.checkpoint)
        raise CheckpointError(f"{args.checkpoint}: " + ("no such checkpoint file" if why == "no such file" else str(why)))
    from aeutils.scale import check_assume_mpp

    check_assume_mpp(args.assume_mpp)
    check_encode_options(args.view, args.percentiles[0], args.percentiles[1], args.tile, args.batch_size)
    check_out_folder(args.out)
    if args.figure is not None and args.figure.is_dir():
        raise AeutilsError(f"{args.figure}: --figure is a folder; give the PNG file to write")
    model = model_for(args.checkpoint, args.device)  # once, and a bad checkpoint fails before any slide
    with folder_lock(args.out, "encode"):  # one writer for the whole run: a second one is refused at once
        return _encode_all(args, model)


def _encode_all(args: argparse.Namespace, model: Any) -> int:
    """Each slide of ``args`` to its map with ``model``; one line per slide. The exit code."""
    from aeutils.scale import scale_kwargs

    failed = 0
    seen: dict[str, str] = {}
    for i, path in enumerate(args.slides):
        try:
            stem = Path(path).stem
            if stem in seen:
                raise SlideError(f"{path}: same name as {seen[stem]} (maps are named by slide stem)")
            seen[stem] = str(path)
            res = encode_slide(
                path, args.out, model=model, **scale_kwargs(args), view=args.view, low=args.percentiles[0],
                high=args.percentiles[1], reconstruction=args.reconstruction, core=args.tile,
                batch_size=args.batch_size, precision=None if args.precision == "auto" else args.precision,
                progress=not args.quiet, keep_work=args.keep_work, overwrite=args.overwrite,
            )
        except AeutilsError as err:
            failed += 1
            print(f"error: {err}", file=sys.stderr, flush=True)
            continue
        print(summary_line(res))
        if args.figure is not None and i == 0:
            print(write_map_figure(path, res.encoding, args.figure))
    return 2 if failed else 0
