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
from dataclasses import dataclass
from typing import Any

import torch

#: the losses the printed table and the verdict compare
SHOWN = ("pixel MSE", "trained", "random", "trained:stage1", "random:stage1")


@dataclass
class SensitivityBench:
    """One run's numbers: ``result`` (:class:`aeutils.sensitivity.SensitivityResult`, every response),
    ``summary`` (its :meth:`~aeutils.sensitivity.SensitivityResult.summary`: per loss ``ratio``,
    ``worst``, ``auc``, ``spearman:<degradation>``, ``auc:<degradation>``; higher is better for all),
    the model used, the run time (s) and the CPU it ran on (:func:`aeutils.speed.cpu_description`)."""

    result: Any
    summary: dict[str, dict[str, float]]
    model: str
    seconds: float
    cpu: dict[str, Any]

    def verdict(self) -> str:
        """Plain-text verdict computed from the numbers (trained vs random encoder vs pixel MSE)."""
        return self.result.verdict(best_by="ratio")

    def report(self) -> str:
        """What the command prints: model, CPU, table, verdict."""
        from aeutils.losses.encoding import DEFAULT_TAP_WEIGHTS

        c = self.cpu
        flags = f"AVX512_BF16 {'yes' if c['avx512_bf16'] else 'no'}, AMX {'yes' if c['amx_bf16'] else 'no'}"
        return "\n".join([
            f"model: {self.model}; default tap_weights {DEFAULT_TAP_WEIGHTS}; {self.seconds:.0f} s",
            f"CPU: {c['model']} ({flags}), {c['threads']} torch threads",
            self.result.to_text(list(SHOWN)),
            "",
            self.verdict(),
        ])


def run_bench(
    checkpoint: str | None = None, *, n: int = 16, size: int = 181, seed: int = 0, batch: int = 8
) -> SensitivityBench:
    """Responses of pixel MSE and EncodingLoss (trained encoder and its random-weight control, in the
    variants of :func:`aeutils.sensitivity.default_variants`) on ``n`` held-out ``size`` px patches
    (level 0, 0.499 um/px) of the sample slide; ``checkpoint`` None: the shipped model."""
    from aeutils.checkpoint import load_model, pretrained_path
    from aeutils.data import sample_patches
    from aeutils.losses.controls import random_encoder
    from aeutils.sensitivity import sensitivity_table
    from aeutils.speed import cpu_description

    margin = 4
    trained = load_model(checkpoint)
    control = random_encoder(trained.config, seed=seed)  # the one random control (as bench/sr_losses.py)
    t0 = time.perf_counter()
    patches = sample_patches(n, size + 2 * margin, split="val", seed=seed)
    res = sensitivity_table(patches, {"trained": trained, "random": control}, margin=margin,
                            batch_size=batch, seed=seed)
    return SensitivityBench(result=res, summary=res.summary(), model=str(checkpoint or pretrained_path()),
                            seconds=time.perf_counter() - t0, cpu=cpu_description())


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
    bench = run_bench(args.checkpoint, n=args.n, size=args.size, seed=args.seed, batch=args.batch)
    print(bench.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
