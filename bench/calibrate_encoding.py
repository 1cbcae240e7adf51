"""Does an LPIPS-style channel calibration make the encoder a better SR content loss? (validation only)

    python bench/calibrate_encoding.py --steps 600     # fit on training regions, then the SR weight search on validation
    python bench/calibrate_encoding.py --smoke         # seconds

Fits :func:`aeutils.losses.calibrated.fit_channel_weights` on 32 training-region patches (64 px) per bundled
slide, prints how often the ranking "nuisance < x2 bicubic < x4 bicubic" holds on validation patches with
uniform and fitted weights, then trains the SR network with mse and with the calibrated loss over the weight
grid, exactly as ``bench/sr_losses.py`` does for its encoder arms (same data, seed, steps, judges), and prints
the validation rows, to compare with that bench's ``encoding`` rows of the same tap set.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="SR optimiser steps per run (default 600)")
    ap.add_argument("--taps", default="stage1+stage2", help="encoder taps, '+'-joined (default stage1+stage2)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 2 steps")
    args = ap.parse_args(argv)
    import pandas as pd
    import torch

    from aeutils.losses import EncodingLoss
    from aeutils.losses.calibrated import CalibratedEncodingLoss, fit_channel_weights, ranking_pairs
    from aeutils.sr.bench import bundled, cpu_name
    from aeutils.sr.search import GRID, search_arm

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    lw = {t: 1.0 for t in args.taps.split("+")}
    n_fit, n_train, n_val, size = (2, 2, 1, 48) if args.smoke else (32, 64, 12, 128)
    plain = EncodingLoss(tap_weights=lw)
    cw, fit = fit_channel_weights(plain, bundled("train", n_fit, 64), steps=20 if args.smoke else 300)
    v = ranking_pairs(bundled("val", n_val, size))
    order = [("shift1", "x2"), ("stain", "x2"), ("x2", "x4"), ("shift1", "x4"), ("stain", "x4")]
    calibrated = CalibratedEncodingLoss(tap_weights=lw, channel_weights=cw)
    for name, loss in (("uniform", EncodingLoss(tap_weights=lw, reduction="none")),
                       ("calibrated", CalibratedEncodingLoss(tap_weights=lw, channel_weights=cw, reduction="none"))):
        d = {k: loss(v[k], v["ref"]) for k in ("shift1", "stain", "x2", "x4")}
        ok = float(torch.stack([(d[a] < d[b]).float().mean() for a, b in order]).mean())
        print(f"{name}: validation distances " + ", ".join(f"{k} {float(x.mean()):.3f}" for k, x in d.items())
              + f"; ranking met {ok:.0%}")
    print(f"fit on training patches: ranking met {fit['before']:.0%} (uniform) -> {fit['after']:.0%} (fitted)")
    spec = dict(train=bundled("train", n_train, 32 if args.smoke else 64), val=bundled("val", n_val, size),
                steps=2 if args.smoke else args.steps, seed=0, batch_size=4, channels=8 if args.smoke else 16,
                n_blocks=1 if args.smoke else 2, threads=1, quiet=False)
    mse = search_arm({**spec, "arm": "mse"})
    out = search_arm({**spec, "arm": "calibrated", "mse_psnr": mse["rows"][0]["psnr"], "grid": (1.0, 10.0) if args.smoke else GRID,
                      "grid_down": ()}, prebuilt={args.taps: calibrated})
    rows = pd.DataFrame(mse["rows"] + out["rows"])[["arm", "setting", "multiple", "psnr", "haarpsi", "stlpips", "nuclei_f1"]]
    print(rows.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"{time.perf_counter() - t0:.0f} s; CPU: {cpu_name()}")


if __name__ == "__main__":
    main()
