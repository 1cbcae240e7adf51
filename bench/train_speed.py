"""Training throughput: the trainer's step (aeutils.train) vs a plain fp32 PyTorch loop, same run.

Both arms train the DEFAULT architecture (``AutoencoderConfig()``: widths 64/32/8, 10 residual blocks
per stage, 1,924,004 parameters) on the same random 3x181x181 batch with MSE:

* plain: the model as built, ``torch.optim.Adam``, ``F.mse_loss``, NCHW float32, no tricks;
* trainer: the step function ``aeutils.train`` runs, configured exactly as it configures itself on
  this device (channels_last, autocast/bf16 or fp16 + grad scaler on CUDA, ...): imported, not copied.

Warm-up steps and timed repeats are interleaved (plain, trainer, trainer, plain, ...) so load from
other processes hits both arms alike; each repeat's images/s is recorded and the medians compared (also
the best-of ratio, and on the CPU the ratio of process CPU seconds per image, which other load moves less).
The FLOPs of one step are counted once with ``torch.utils.flop_counter.FlopCounterMode`` (convs and
matmuls, forward + backward) to report achieved TFLOP/s.

``--options`` adds one arm per speed option the trainer has but leaves off on this device (on the CPU:
channels_last, bf16 autocast), each the trainer's step with that option forced on, so the choice of
defaults is measured here, not asserted. On the CPU the script also times a large fp32 matrix product
(``torch.mm``, 2048x2048, best of 10) in the same run: the most this process gets from these cores. Each
arm's achieved GFLOP/s is printed as a share of that rate, with the share a 1.3x speed-up would need.

    python bench/train_speed.py                    # CPU default: batch 4, 1 warm-up + 5 repeats of 1 step
    python bench/train_speed.py --options          # + channels_last and bf16-autocast arms (about 3 min)
    python bench/train_speed.py --batch-size 64 --repeats 10 --steps 10   # on a GPU
    python bench/train_speed.py --smoke            # tiny model and batch: seconds (CI)
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

PATCH = 181  #: training crop side in pixels

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


def trainer_step(config: object, device: torch.device, **options: bool) -> Step:
    """The trainer's own step: ``aeutils.train.Trainer(...).step`` for a fresh model of ``config`` on
    ``device``, with the speed settings ``aeutils.train.train`` uses by default (channels_last and autocast
    bf16, or fp16 + GradScaler, on CUDA only: both measured slower on this project's CPU) unless
    ``options`` (``channels_last=``, ``amp=``) force one. Includes what each real step does: the
    non-finite-loss check and the LR-scheduler step."""
    from aeutils.model import Autoencoder
    from aeutils.train import Trainer

    trainer = Trainer(Autoencoder(config), device=device, **options)
    return trainer.step


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Best GFLOP/s of an nxn float32 ``torch.mm`` on ``device`` over ``repeats`` (2n^3 FLOPs each): the
    compute rate this process actually gets from the hardware, measured in the same run as the arms."""
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Step, x: torch.Tensor, steps: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for ``steps`` consecutive training steps on batch ``x``
    (device synchronised). CPU seconds count every thread of this process: on a shared machine they
    move less with other processes' load than wall time does."""
    _sync(x.device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step(x)
    _sync(x.device)
    return time.perf_counter() - t0, time.process_time() - c0


def interleaved_rates(
    arms: dict[str, Step], x: torch.Tensor, steps: int, repeats: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run ``warmup`` untimed then ``repeats`` timed rounds of ``steps`` steps per arm, interleaved in
    alternating order (A, B, B, A, ...) so other load hits every arm alike. Returns per-arm lists of
    images/s (wall clock) and of process CPU seconds per image."""
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


def step_flops(config: object, device: torch.device) -> int:
    """FLOPs (2 per multiply-add) of one forward + backward of the plain model on one 3x181x181 image."""
    from torch.utils.flop_counter import FlopCounterMode

    from aeutils.model import Autoencoder

    model = Autoencoder(config).to(device).train()
    x = torch.rand(1, 3, PATCH, PATCH, device=device)
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(model(x), x).backward()
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default 4 on CPU, 64 on CUDA)")
    parser.add_argument("--steps", type=int, default=1, help="steps per timed repeat (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per arm (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per arm (default 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: aeutils.device.pick_device)")
    parser.add_argument("--options", action="store_true",
                        help="add an arm per speed option that is off by default on this device (CPU: channels_last, bf16 autocast)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, batch 2, 2 repeats: a seconds-long check of the script")
    args = parser.parse_args(argv)

    from aeutils.device import pick_device
    from aeutils.model import Autoencoder, AutoencoderConfig, count_parameters

    device = pick_device(args.device, quiet=True)
    if args.smoke:
        config = AutoencoderConfig(widths=(8, 8, 4), n_blocks=1)
        batch, steps, repeats, warmup = 2, 1, 2, 1
    else:
        config = AutoencoderConfig()
        batch = args.batch_size or (64 if device.type == "cuda" else 4)
        steps, repeats, warmup = args.steps, args.repeats, args.warmup

    torch.manual_seed(0)
    x = torch.rand(batch, 3, PATCH, PATCH, device=device)
    plain_model = Autoencoder(config).to(device).train()
    arms: dict[str, Step] = {"plain fp32": plain_step(plain_model), "trainer": trainer_step(config, device)}
    if args.options and device.type != "cuda":  # on CUDA both are already on by default
        arms["+chan_last"] = trainer_step(config, device, channels_last=True)
        arms["+bf16"] = trainer_step(config, device, amp=True)
    names = list(arms)

    threads = torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    extra = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f" ({platform.processor() or platform.machine()})"
    print(f"device: {device}{extra}, torch {torch.__version__}, {threads} threads, load average {load:.2f}")
    print(f"model: AutoencoderConfig({'smoke' if args.smoke else 'default'}) widths={config.widths} "
          f"n_blocks={config.n_blocks}, {count_parameters(plain_model):,} parameters; "
          f"batch {batch}x3x{PATCH}x{PATCH}, {warmup} warm-up + {repeats} repeats x {steps} steps per arm")

    rates, cpu = interleaved_rates(arms, x, steps, repeats, warmup)

    flops = step_flops(config, device)
    roof = matmul_gflops(device) if device.type == "cpu" else None
    med = {name: statistics.median(v) for name, v in rates.items()}
    unit, scale = ("TFLOP/s", 1e12) if device.type == "cuda" else ("GFLOP/s", 1e9)
    for name in names:
        spread = f"{min(rates[name]):.3g}-{max(rates[name]):.3g}"
        cpu_note = f", {statistics.median(cpu[name]):.3g} CPU s/img" if device.type == "cpu" else ""
        roof_note = f" ({med[name] * flops / 1e9 / roof:.0%} of the matmul rate)" if roof else ""
        print(f"{name:>10}: {med[name]:8.3g} img/s median (range {spread}), "
              f"{med[name] * flops / scale:.3g} {unit} achieved{roof_note}{cpu_note}")
    print(f"one step: {flops / 1e9:.1f} GFLOP per image (forward + backward, FlopCounterMode)")
    for name in names[2:]:
        print(f"speed-up {name} / plain fp32: {med[name] / med['plain fp32']:.2f}x (median img/s)")
    ratio = med["trainer"] / med["plain fp32"]
    best = max(rates["trainer"]) / max(rates["plain fp32"])
    target = " (target >= 1.3x on CPU)" if device.type == "cpu" else ""
    print(f"speed-up trainer / plain fp32: {ratio:.2f}x (median img/s){target}; best-of-{repeats}: {best:.2f}x")
    if device.type == "cpu":
        cpu_ratio = statistics.median(cpu["plain fp32"]) / statistics.median(cpu["trainer"])
        print(f"CPU-time speed-up (process CPU s per image, less sensitive to other load): {cpu_ratio:.2f}x")
        need = 1.3 * med["plain fp32"] * flops / 1e9 / roof
        print(f"fp32 matmul rate, same run: {roof:.3g} GFLOP/s (torch.mm 2048x2048, best of 10); "
              f"plain fp32 reaches {med['plain fp32'] * flops / 1e9 / roof:.0%} of it, "
              f"a 1.3x speed-up at the same FLOPs would need {need:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
