"""Training throughput: the trainer as ``train()`` runs it (speed options auto) vs a plain fp32 loop, same run.

Both arms train the DEFAULT architecture (``AutoencoderConfig()``: widths 64/32/8, 10 residual blocks
per stage, 1,924,004 parameters) on the same random 3x181x181 batch with MSE:

* plain fp32: the model as built, ``torch.optim.Adam``, ``F.mse_loss``, NCHW float32, no tricks;
* trainer (auto): ``aeutils.training.Trainer`` with the speed options ``aeutils.training.choose_speed``
  picks for this model, batch and crop, exactly as ``train()`` does (on the CPU: a measured probe of
  fp32, channels_last, bf16 autocast and both, forced here because a bench run is too short to "pay"
  for it; on CUDA: channels_last + autocast). Imported, not copied; the probe's wall time is reported.

Warm-up steps and timed repeats are interleaved (plain, trainer, trainer, plain, ...) so load from other
processes hits both arms alike; medians are compared (also best-of, and on the CPU the ratio of process
CPU seconds per image). Targets: >= 1.8x on CPUs with AMX-BF16, >= 0.95x elsewhere (auto must never pick
a slower path). CPU flags are read for this report only; the trainer never looks at them. FLOPs of one
step are counted with ``torch.utils.flop_counter.FlopCounterMode`` for achieved (T|G)FLOP/s.

``--options`` adds one arm per candidate (the trainer forced to each). ``--quality N`` trains the
trainer with fp32 and with the auto choice for N steps each from the same initial weights on the same
patches of the bundled sample slide (crop ``--quality-crop``) and prints the validation PSNR of both
(target: within 0.2 dB when the choice uses bf16).

    python bench/train_speed.py                       # CPU: batch 4, 1 warm-up + 5 repeats (a few minutes)
    python bench/train_speed.py --options --quality 150
    python bench/train_speed.py --config n_blocks=1 widths=32,32,8 --batch-size 16 --quality 150   # shipped model
    python bench/train_speed.py --batch-size 64 --repeats 10 --steps 10 --peak-tflops 989   # on a GPU
    python bench/train_speed.py --smoke --options --quality 4   # tiny model: seconds (CI)

``main`` returns the numbers as a dict (tests check those).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

PATCH = 181  #: training crop side in pixels
PSNR_TOLERANCE_DB = 0.2

Step = Callable[[torch.Tensor], object]


def plain_step(model: torch.nn.Module, lr: float = 1e-3) -> Step:
    """The baseline: one fp32 NCHW Adam step on MSE(model(x), x), nothing else."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step(x: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), x)
        loss.backward()
        opt.step()
        return loss

    return step


def auto_choice(config: Any, batch_shape: tuple[int, ...], device: torch.device) -> Any:
    """The speed choice ``aeutils.training.train`` makes for this model and batch (probe forced on the CPU)."""
    from aeutils.model import Autoencoder
    from aeutils.training import ReconstructionLoss, choose_speed

    torch.manual_seed(0)
    return choose_speed(Autoencoder(config), ReconstructionLoss(), batch_shape, device, force="probe")


def trainer_step(config: Any, device: torch.device, choice: Any) -> Step:
    """``aeutils.training.Trainer(...).step`` for a fresh model of ``config`` run as ``choice`` says: what
    each real step does, including the non-finite-loss check and the LR-scheduler step."""
    from aeutils.model import Autoencoder
    from aeutils.training import Trainer

    return Trainer(Autoencoder(config), device=device, speed=choice).step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Step, x: torch.Tensor, steps: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for ``steps`` consecutive training steps on batch ``x``."""
    _sync(x.device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step(x)
    _sync(x.device)
    return time.perf_counter() - t0, time.process_time() - c0


def interleaved_rates(
    arms: dict[str, Step], x: torch.Tensor, steps: int, repeats: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``warmup`` untimed then ``repeats`` timed rounds of ``steps`` steps per arm, in alternating order
    (A, B, B, A, ...). Returns per-arm lists of images/s (wall clock) and process CPU seconds per image."""
    names = list(arms)
    for i in range(warmup):
        for name in names if i % 2 == 0 else names[::-1]:
            arms[name](x)
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    images = x.shape[0] * steps
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu_s = time_steps(arms[name], x, steps)
            rates[name].append(images / wall)
            cpu[name].append(cpu_s / images)
    return rates, cpu


def step_flops(config: Any, device: torch.device) -> int:
    """FLOPs (2 per multiply-add) of one forward + backward of the plain model on one 3x181x181 image."""
    from torch.utils.flop_counter import FlopCounterMode

    from aeutils.model import Autoencoder

    model = Autoencoder(config).to(device).train()
    x = torch.rand(1, 3, PATCH, PATCH, device=device)
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(model(x), x).backward()
    return int(counter.get_total_flops())


def quality(config: Any, device: torch.device, choice: Any, steps: int, batch: int, crop: int, n_val: int = 16) -> dict[str, float]:
    """Validation PSNR (dB, each arm evaluated as its run would report it) after ``steps`` trainer steps
    with fp32 and with ``choice``, same initial weights, same batches of sample-slide patches."""
    from aeutils.data import sample_patches
    from aeutils.model import Autoencoder
    from aeutils.speed import Choice
    from aeutils.training import Trainer

    train_x = sample_patches(n=max(batch, 32), size=crop, split="train", seed=0)
    val_x = sample_patches(n=n_val, size=crop, split="val", seed=0)
    out: dict[str, float] = {}
    for name in dict.fromkeys(["fp32", choice.name]):
        torch.manual_seed(0)
        tr = Trainer(Autoencoder(config), device=device, total_steps=steps, speed=Choice(name, "forced"))
        g = torch.Generator().manual_seed(1)
        for _ in range(steps):
            tr.step(train_x[torch.randperm(len(train_x), generator=g)[:batch]])
        out[name] = tr.evaluate([val_x])["psnr"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the bench, print its lines, return its numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default 4 on CPU, 64 on CUDA)")
    parser.add_argument("--steps", type=int, default=1, help="steps per timed repeat (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per arm (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per arm (default 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: aeutils.device.pick_device)")
    parser.add_argument("--options", action="store_true", help="add an arm per candidate (the trainer forced to each)")
    parser.add_argument("--quality", type=int, default=0, metavar="N",
                        help="also train N steps with fp32 and with the auto choice and compare validation PSNR")
    parser.add_argument("--quality-crop", type=int, default=61, help="crop of the --quality runs (default 61)")
    parser.add_argument("--config", nargs="+", default=None, metavar="KEY=VALUE",
                        help="another architecture, as for python -m aeutils train (e.g. n_blocks=1 widths=32,32,8)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (bf16) TFLOP/s, for the share")
    parser.add_argument("--smoke", action="store_true", help="tiny model, batch 2, 2 repeats: a seconds-long check of the script")
    args = parser.parse_args(argv)

    from aeutils.device import pick_device
    from aeutils.model import Autoencoder, AutoencoderConfig, count_parameters
    from aeutils.speed import CANDIDATES, Choice, cpu_description

    device = pick_device(args.device, quiet=True)
    if args.smoke:
        config = AutoencoderConfig(widths=(8, 8, 4), n_blocks=1)
        batch, steps, repeats, warmup = 2, 1, 2, 1
    else:
        from aeutils.training import parse_config

        config = parse_config(args.config) or AutoencoderConfig()
        batch = args.batch_size or (64 if device.type == "cuda" else 4)
        steps, repeats, warmup = args.steps, args.repeats, args.warmup

    cpu = cpu_description()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{cpu['model']}, AVX512_BF16 {'yes' if cpu['avx512_bf16'] else 'no'}, AMX-BF16 {'yes' if cpu['amx_bf16'] else 'no'}")
    print(f"device: {device} ({where}), torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.2f}")
    torch.manual_seed(0)
    plain_model = Autoencoder(config).to(device).train()
    kind = "smoke" if args.smoke else ("--config" if args.config else "default")
    print(f"model: AutoencoderConfig({kind}) widths={config.widths} "
          f"n_blocks={config.n_blocks}, {count_parameters(plain_model):,} parameters; "
          f"batch {batch}x3x{PATCH}x{PATCH}, {warmup} warm-up + {repeats} repeats x {steps} steps per arm")

    shape = (batch, 3, PATCH, PATCH)
    choice = auto_choice(config, shape, device)  # prints the probe's line
    x = torch.rand(shape, device=device)
    arms: dict[str, Step] = {"plain fp32": plain_step(plain_model), "trainer (auto)": trainer_step(config, device, choice)}
    if args.options:
        for name in CANDIDATES:
            arms[name] = trainer_step(config, device, Choice(name, "forced"))
    rates, cpu_s = interleaved_rates(arms, x, steps, repeats, warmup)

    flops = step_flops(config, device)
    med = {name: statistics.median(v) for name, v in rates.items()}
    unit, scale = ("TFLOP/s", 1e12) if device.type == "cuda" else ("GFLOP/s", 1e9)
    for name in arms:
        spread = f"{min(rates[name]):.3g}-{max(rates[name]):.3g}"
        label = f"trainer (auto: {choice.name})" if name == "trainer (auto)" else name
        cpu_note = f", {statistics.median(cpu_s[name]):.3g} CPU s/img" if device.type == "cpu" else ""
        peak = f" ({med[name] * flops / 1e12 / args.peak_tflops:.1%} of {args.peak_tflops:g} peak)" if args.peak_tflops else ""
        print(f"{label:>34}: {med[name]:8.3g} img/s median (range {spread}), "
              f"{med[name] * flops / scale:.3g} {unit} achieved{peak}{cpu_note}")
    print(f"one step: {flops / 1e9:.1f} GFLOP per image (forward + backward, FlopCounterMode)")
    for name in list(arms)[2:]:
        print(f"speed-up {name} / plain fp32: {med[name] / med['plain fp32']:.2f}x (median img/s)")
    ratio = med["trainer (auto)"] / med["plain fp32"]
    best = max(rates["trainer (auto)"]) / max(rates["plain fp32"])
    target = None
    if device.type == "cpu":
        target = 1.8 if cpu["amx_bf16"] else 0.95
        why = "a CPU with AMX-BF16" if cpu["amx_bf16"] else "a CPU without AMX-BF16"
        note = f"; target >= {target}x on {why}: {'met' if ratio >= target else 'NOT met'}"
    else:
        note = ""
    print(f"speed-up trainer (auto: {choice.name}) / plain fp32: {ratio:.2f}x (median img/s){note}; "
          f"best-of-{repeats}: {best:.2f}x; probe {choice.probe_seconds:.1f} s")
    cpu_ratio = None
    if device.type == "cpu":
        cpu_ratio = statistics.median(cpu_s["plain fp32"]) / statistics.median(cpu_s["trainer (auto)"])
        print(f"CPU-time speed-up (process CPU s per image, less sensitive to other load): {cpu_ratio:.2f}x")

    result: dict[str, Any] = {
        "device": str(device), "where": where, "cpu": cpu, "torch": torch.__version__, "load_average": load,
        "batch": batch, "choice": choice.to_dict(), "rates": rates, "median": med, "ratio": ratio,
        "best_ratio": best, "cpu_ratio": cpu_ratio, "target": target,
        "met": None if target is None else ratio >= target, "flops_per_image": flops, "quality": None,
    }
    if args.quality:
        q_crop = 33 if args.smoke else args.quality_crop
        q_batch = batch if args.smoke else (args.batch_size or 8)
        psnr = quality(config, device, choice, args.quality, q_batch, q_crop)
        diff = psnr[choice.name] - psnr["fp32"]
        uses_bf16 = Choice(choice.name).amp
        verdict = (f"target |difference| <= {PSNR_TOLERANCE_DB} dB: {'met' if abs(diff) <= PSNR_TOLERANCE_DB else 'NOT met'}"
                   if uses_bf16 else "no bf16 chosen: nothing to check")
        print(f"quality: validation PSNR after {args.quality} steps (batch {q_batch}, crop {q_crop}, sample-slide patches): "
              f"fp32 {psnr['fp32']:.2f} dB, {choice.name} {psnr[choice.name]:.2f} dB, difference {diff:+.2f} dB ({verdict})")
        result["quality"] = {"steps": args.quality, "crop": q_crop, "batch": q_batch, "psnr": psnr, "difference_db": diff,
                             "met": abs(diff) <= PSNR_TOLERANCE_DB if uses_bf16 else None}
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
