"""The GAN regime: does the histology encoder make SRGAN better than random weights, pixel loss, ImageNet features?

    python bench/sr_gan.py                          # the cpu size (2 one-thread processes; see the printed time)
    python bench/sr_gan.py --size paper --device cuda --out OUT   # SRGAN's generator (16 x 64) and 96 px crops, on a GPU
    python bench/sr_gan.py --arms pixel,encoding,random --gan-steps 100
    python bench/sr_gan.py --smoke                  # tiny networks, 3 + 3 steps (pytest runs this)

The command line over :mod:`aeutils.sr.gan_bench`: one pixel-loss pretraining of the SRGAN generator on patches of
the bundled slides' training regions, then every arm from that same generator, seed, data and steps: ``pixel``
(MSE alone: the SRResNet) and SRGAN (MSE + content at train_srgan's matched weight + 1e-3 adversarial) with
each content loss (``encoding``, ``random``, ``imagenet``, ``vgg16``; the last two need the ``[baselines]``
extra and are skipped with the reason otherwise). Every arm's final generator is judged on every 128 px
test-region tile of both slides (per slide and pooled; mean [95 % paired bootstrap interval]), and
``encoding`` against each other method (PSNR: dB; the other judges: relative difference). Rerunning with the
same ``--out`` resumes. Writes ``OUT/patches/``, ``OUT/runs/{pretrain,<arm>}/``, ``OUT/per_image.csv``,
``OUT/table.csv``, ``OUT/diffs.csv``. :func:`main` returns :class:`aeutils.sr.gan_bench.GanBenchResult`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aeutils.errors import AeutilsError  # noqa: E402
from aeutils.sr.gan_bench import GAN_ARMS, SIZES, GanBenchResult, run_gan  # noqa: E402


def _pct(judge: str, r: object) -> str:
    d, lo, hi = r["diff"], r["lo"], r["hi"]  # type: ignore[index]
    return f"{d:+.2f} dB [{lo:+.2f}, {hi:+.2f}]" if judge == "psnr" else f"{d:+.1%} [{lo:+.1%}, {hi:+.1%}]"


def main(argv: list[str] | None = None) -> GanBenchResult:
    from aeutils.metrics.judges import JUDGES, LABELS, LOWER_IS_BETTER
    from aeutils.sr.report import format_table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/out/sr_gan", help="output folder (resumed when it holds an earlier run)")
    ap.add_argument("--size", default="cpu", choices=[s for s in SIZES if s != "tiny"],
                    help="cpu: 6 x 32 generator, 64 px crops, 1000 + 400 steps; paper: 16 x 64, 96 px, 4000 + 2000 (a GPU)")
    ap.add_argument("--smoke", action="store_true", help="the tiny size and 3 test tiles per slide (seconds)")
    ap.add_argument("--arms", default=",".join(GAN_ARMS), help=f"comma-separated subset of {','.join(GAN_ARMS)}")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="pixel pretraining steps (once, shared)")
    ap.add_argument("--gan-steps", type=int, default=None, help="steps per arm after the pretraining")
    ap.add_argument("--n-test", type=int, default=None, help="at most this many test tiles per slide (default: every one)")
    ap.add_argument("--workers", type=int, default=None, help="processes the arms run in (default: up to 2 on CPU, 1 on GPU)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    args = ap.parse_args(argv)
    arms = tuple(a for a in args.arms.split(",") if a)
    bad = [a for a in arms if a not in GAN_ARMS]
    if bad or "encoding" not in arms:
        ap.error(f"--arms must include encoding (the reference) and only {', '.join(GAN_ARMS)}; got {args.arms!r}")
    over = {k: v for k, v in (("pretrain_steps", args.pretrain_steps), ("gan_steps", args.gan_steps)) if v is not None}
    try:
        res = run_gan(args.out, size="tiny" if args.smoke else args.size, arms=arms,
                      n_test=3 if args.smoke and args.n_test is None else args.n_test, workers=args.workers,
                      device=args.device, n_boot=200 if args.smoke else 2000, **over)
    except AeutilsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"\nGAN regime, size {res.size}: {res.steps[0]} pixel steps once, then {res.steps[1]} steps per arm; "
          f"{res.n_test} test tiles; CPU: {res.cpu}; {res.seconds:.0f} s in all "
          f"(training: {', '.join(f'{k} {v:.0f} s' for k, v in res.train_seconds.items())})")
    print("content weights (train_srgan's matched default, no test image involved): "
          + ", ".join(f"{a} {w:.4g}" for a, w in res.content_weights.items() if a != "pixel"))
    for name, table in res.tables.items():
        n = len(res.groups) if name == "pooled" else res.groups.count(name)
        print(f"\ntest ({name}, {n} tiles), final generators, mean [95 % bootstrap interval], * best arm:")
        print(format_table(table))
    if res.skipped:
        print("skipped: " + "; ".join(f"{a} ({w})" for a, w in res.skipped.items()))
    print("\nencoding vs each other method (pooled; paired bootstrap over tiles; PSNR in dB, others relative):")
    d = res.diffs.set_index(["vs", "judge"])
    for other in dict.fromkeys(res.diffs["vs"]):
        parts = [f"{LABELS[j]}{' (lower better)' if j in LOWER_IS_BETTER else ''} {_pct(j, d.loc[(other, j)])}"
                 for j in JUDGES]
        print(f"  vs {other}: " + "; ".join(parts))
    return res


if __name__ == "__main__":
    main()
