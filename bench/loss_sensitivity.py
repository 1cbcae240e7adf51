"""Does the trained encoder separate lost detail from nuisances better than pixel MSE and a random encoder?

    python bench/loss_sensitivity.py            # 16 held-out 181 px patches of the sample slide
    python bench/loss_sensitivity.py --smoke    # seconds: 2 patches of 33 px (pytest runs this)

On held-out patches (``aeutils.data.sample_patches(split="val")``, level 0, 0.499 um/px) it applies
graded degradations an SR model must fix (Gaussian blur, x2/x3/x4 bicubic down-up, Gaussian noise)
and nuisances it should not be punished for (1-2 px shift, +-2/4 % brightness, 5/10 % HED stain
shift) and prints, for pixel MSE, EncodingLoss on the trained encoder and on the same architecture
with random weights (the control), in several tap/normalisation variants (``aeutils.sensitivity.sensitivity_table``):
Spearman's rho over severity, the detail/nuisance ratio (geometric means), the worst case and the AUC.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny run for tests (2 patches of 33 px)")
    ap.add_argument("--n", type=int, default=16, help="held-out patches")
    ap.add_argument("--size", type=int, default=181, help="patch side, pixels (4k+1)")
    ap.add_argument("--seed", type=int, default=0, help="patch choice, noise and the random control's init")
    ap.add_argument("--checkpoint", default=None, help="autoencoder checkpoint (default: the shipped model)")
    ap.add_argument("--batch", type=int, default=8, help="patches per forward")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.size = 2, 33
    if args.threads:
        torch.set_num_threads(args.threads)

    from aeutils.checkpoint import pretrained_path, as_model
    from aeutils.data import sample_patches
    from aeutils.loss import DEFAULT_LAYER_WEIGHTS
    from aeutils.sensitivity import random_control, sensitivity_table

    margin = 4
    trained = as_model(args.checkpoint)
    control = random_control(trained, args.seed)
    t0 = time.perf_counter()
    patches = sample_patches(args.n, args.size + 2 * margin, split="val", seed=args.seed)
    res = sensitivity_table(patches, {"trained": trained, "random": control}, margin=margin,
                            batch_size=args.batch, seed=args.seed)
    print(f"model: {args.checkpoint or pretrained_path()}; default layer_weights {DEFAULT_LAYER_WEIGHTS}; "
          f"{time.perf_counter() - t0:.0f} s")
    print(res.to_text(["pixel MSE", "trained", "random", "trained:stage1", "random:stage1"]))
    print()
    print(res.verdict(best_by="ratio"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
