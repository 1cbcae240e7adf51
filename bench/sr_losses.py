"""Which content loss makes a better x4 H&E super-resolver? Pixel MSE alone vs MSE + one content term.

    python bench/sr_losses.py                        # default steps (every arm and weight; see the printed time)
    python bench/sr_losses.py --eval-images DIR      # judge on your own H&E images (PNG/JPEG, >= 20 px, 128 px advised, ~0.5 um/px)
    python bench/sr_losses.py --out OUT --steps N --vgg19-weights vgg19-dcbb9e9d.pth
    python bench/sr_losses.py --checkpoint run/best.pt --arms mse,encoding --val-only   # judge an encoder on validation
    python bench/sr_losses.py --smoke                # seconds (pytest runs this)

The command line over :mod:`aeutils.sr.bench` (arms, the validation weight rule, the judges, the goal:
see its docstring). Arms, all the same :class:`aeutils.sr.network.SRNet` (16 channels, 2 blocks: sized for a
CPU), seed, training data and steps, trained on the bundled slides' training regions (64 HR patches
of 64 px per slide, batch 4, bicubic x4 LR); chosen on 12 validation images of 128 px per slide; judged on
every 128 px test-region tile of both slides (per slide and pooled). Each content arm is trained at rising
multiples of a matched weight until its validation PSNR is 1 dB below ``mse``'s (its curve); its weight (and,
for the encoder arms ``encoding`` and ``random`` alike, its tap set) is chosen on the **validation** regions:
the best validation ST-LPIPS within 0.15 dB PSNR of ``mse`` (half the goal's 0.3 dB budget). Every trained
weight is judged on the test images (perception-distortion curves) and the headline compares encoding's
curve with each other arm's at matched distortion (PSNR, HaarPSI), with paired bootstrap intervals.

Writes ``OUT/hr/NAME.png``, ``OUT/bicubic/NAME.png``, ``OUT/<arm>/NAME.png`` (chosen models),
``OUT/curves/<label>/NAME.png`` (every trained model), ``OUT/curves.csv`` (arm, setting, multiple, weight,
label, chosen, folder relative to OUT, test means), ``OUT/headline.csv``, ``OUT/crops.png``, ``OUT/tradeoff.png``
(validation) and ``OUT/pd.png`` (test curves). :func:`main` returns the numbers as data
(:class:`aeutils.sr.bench.SRBenchResult`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aeutils.errors import AeutilsError  # noqa: E402
from aeutils.sr.bench import (  # noqa: E402,F401  (re-exported for tests and users)
    ARMS, DEFAULT_STEPS, GRID, JUDGES, NORMALIZES, TAPS, SRBenchResult, choose, choose_weight, format_table, goal,
    goal_line, load_eval_images, run,
)
from aeutils.sr.curves import headline_lines  # noqa: E402

#: --smoke: tiny data, 2 steps, one grid weight, one tap set (seconds)
SMOKE = dict(n_train=2, hr_size=32, n_val=1, n_test=1, eval_size=48, grid=(1.0, 10.0), grid_down=(), taps=("stage1",),
             batch_size=2, channels=8, n_blocks=1, n_boot=50)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v)


def main(argv: list[str] | None = None) -> SRBenchResult:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-images", default=None, help="folder of RGB H&E images (default: the bundled test regions)")
    ap.add_argument("--out", default="bench/out/sr_losses",
                    help="output folder (hr/, bicubic/, <arm>/, curves/<label>/, curves.csv, headline.csv, figures)")
    ap.add_argument("--n-test", type=int, default=None, help="at most this many test tiles per slide (default: every one)")
    ap.add_argument("--steps", type=int, default=None, help=f"optimiser steps per run (default {DEFAULT_STEPS}; smoke 2)")
    ap.add_argument("--smoke", action="store_true", help="seconds: tiny data, 2 steps, one weight, one tap set")
    ap.add_argument("--vgg19-weights", default=None, help="torchvision vgg19 state dict file for the vgg19 arm")
    ap.add_argument("--checkpoint", default=None, help="encoder checkpoint for the encoding arm (default: shipped)")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    ap.add_argument("--grid", default=None, help=f"rising multiples of the matched weight, tried until PSNR leaves the "
                    f"budget (default {','.join(f'{g:g}' for g in GRID)})")
    ap.add_argument("--taps", default=None, help=f"encoder-arm tap sets, comma-separated (default {','.join(TAPS)})")
    ap.add_argument("--normalize", default=None, help=f"encoder-arm normalisations (default {','.join(NORMALIZES)})")
    ap.add_argument("--workers", type=int, default=None, help="processes for the arms' searches (default: up to 2, one per core)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads with --workers 1 (default: the faster of 1 and torch's, measured)")
    ap.add_argument("--val-only", action="store_true", help="no test images: the table holds the validation numbers")
    args = ap.parse_args(argv)
    arms = tuple(a for a in args.arms.split(",") if a)
    bad = [a for a in arms if a not in ARMS]
    if bad:
        ap.error(f"unknown arms {bad}; arms are {', '.join(ARMS)}")
    kw: dict[str, Any] = dict(SMOKE) if args.smoke else {}
    for name, value in (("grid", args.grid and _floats(args.grid)), ("taps", args.taps and tuple(args.taps.split(","))),
                        ("normalizes", args.normalize and tuple(args.normalize.split(","))), ("threads", args.threads),
                        ("workers", args.workers), ("n_test", args.n_test)):
        if value:
            kw[name] = value
    steps = args.steps if args.steps is not None else (2 if args.smoke else DEFAULT_STEPS)
    try:
        res = run(steps=steps, eval_images=args.eval_images, out=args.out, arms=arms, vgg19_weights=args.vgg19_weights,
                  checkpoint=args.checkpoint, test=not args.val_only, **kw)
    except AeutilsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    what = "validation images (--val-only)" if args.val_only else "test images"
    print(f"\n{what}: {res.n_test}; {res.steps} steps per run; CPU: {res.cpu}; {res.seconds:.0f} s in all")
    print("validation (every setting tried; the rule picks per arm):")
    print(res.val.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for name, table in res.tables.items():
        n = len(res.groups) if name == "pooled" else res.groups.count(name)
        print(f"\n{'validation' if args.val_only else 'test'} ({name}, {n} images), mean [95 % bootstrap interval], * best arm:")
        print(format_table(table))
    if res.skipped:
        print("skipped: " + "; ".join(f"{a} ({w})" for a, w in res.skipped.items()))
    if res.goal:
        print("\nheadline (perception-distortion curves on the test images; intervals: paired bootstrap over images):")
        for line in headline_lines(res.headline, res.chosen):
            print("  " + line)
        print(goal_line(res.goal))
    return res


if __name__ == "__main__":
    main()
