"""The fastest way to run a model on this machine, decided by measurement (like ``cudnn.benchmark``).

The right CPU options flip between machines: on a Xeon with AMX-BF16, channels_last + bf16 autocast
trained the default model 2.7x faster than fp32; on an AVX2-only EPYC, bf16 was emulated (0.05x) and
channels_last 0.74x. So on the CPU nothing is assumed: a few steps of each candidate

    fp32                 float32, NCHW (the baseline)
    channels_last        float32, NHWC memory format
    bf16                 bf16 autocast (fp32 master weights; parameters never change dtype)
    channels_last+bf16   both

are timed on the caller's own model and input shape, interleaved (A B C D, D C B A, ...) so other load
hits every candidate alike, and the fastest one wins if it beats the baseline by :data:`MARGIN`;
one line with the rates and the choice is printed. First every candidate runs once on a one-image
slice; one still more than :data:`SCREEN_FACTOR` x slower than the baseline there after a few calls
is dropped (so an emulated bf16, 20x slower on an AVX2-only CPU, costs a few batch-1 steps to rule out).

Two entry points:

* :func:`training_choice`: once per training run (:func:`aeutils.training.train`), for a step function the
  caller builds per candidate; skipped (baseline) where the probe would cost more than 1/:data:`PAYS`
  (5 %) of the run. On CUDA / MPS no probe: the trainer's device defaults.
* :func:`inference_choice`: forward-only (or forward + backward to the input) paths, cached per
  process for a (model architecture, input shape, device) key; the probe runs only once the key's
  work (input elements of this call's batches plus earlier calls') reaches :data:`PAYS` x the probe's own,
  so a 16-patch figure never probes and a whole slide does. A fully convolutional model can be probed
  on a smaller ``probe_shape`` than its batches (``sr apply``: one 64 px tile), so the probe pays on
  small slides too: the candidates' speed ratios hold across sizes (measured on the shipped SR generator,
  Xeon with AMX: channels_last+bf16 3.3-4.1x fp32 at 64, 128 and 256 px tiles). Run under the result with :func:`forward` or
  :func:`running` + :func:`prepare`; for example, a whole-slide encoder::

      choice = speed.inference_choice(model, (64, 3, 181, 181), expected_batches=len(batches))
      with torch.inference_mode():
          z = speed.forward(model.encode, batch, choice)   # float32 NCHW, whatever the choice

Forcing: ``$MSCOPY_CPU_SPEED`` = a candidate name (use it, no probe), ``probe`` (probe even where it
does not pay) or ``auto``/unset; functions also take ``force=``. CPU flags (:func:`cpu_description`)
are only reported, never used to decide.
"""
from __future__ import annotations

import copy
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from aeutils.errors import AeutilsError

#: candidate names, baseline first
CANDIDATES: tuple[str, ...] = ("fp32", "channels_last", "bf16", "channels_last+bf16")
#: env var forcing a candidate (or "probe" / "auto")
ENV = "MSCOPY_CPU_SPEED"
#: a probe must cost at most 1/PAYS of the work it speeds up (5 %)
PAYS = 20
#: a candidate replaces the baseline only if at least this much faster (noise margin)
MARGIN = 1.05
#: a screened candidate is dropped only if its call also takes this long (seconds; below it timing noise
#: rules, and a full probe is cheap anyway)
SLOW_SECONDS = 0.1
#: the one-image screen drops a candidate still this many times slower than the baseline after up to
#: SCREEN_ROUNDS calls each (only the suspects are called again)
SCREEN_FACTOR, SCREEN_ROUNDS = 5.0, 3
#: untimed warm-up calls and timed calls per candidate
WARMUP, REPEATS = 1, 3


@dataclass
class Choice:
    """A speed decision: ``name`` (one of :data:`CANDIDATES`), why (``source``: "probe", "forced",
    "env", "device default", "short run", "resumed", "not yet paid"), the probe's best images/s per
    candidate (best of its timed calls; ``rates``; empty without a probe) and its wall time (``probe_seconds``)."""

    name: str = "fp32"
    source: str = "device default"
    rates: dict[str, float] = field(default_factory=dict)
    probe_seconds: float = 0.0
    what: str = "training"

    def __post_init__(self) -> None:
        if self.name not in CANDIDATES:
            raise AeutilsError(f"speed choice {self.name!r}: expected one of {', '.join(CANDIDATES)}")

    @property
    def channels_last(self) -> bool:
        """Whether inputs (and, for training, the model) use the channels_last memory format."""
        return self.name.startswith("channels_last")

    @property
    def amp(self) -> bool:
        """Whether the forward pass runs under bf16 autocast (fp32 weights)."""
        return self.name.endswith("bf16")

    def describe(self) -> str:
        """One line: the rates and the choice."""
        rates = ", ".join(f"{k} {v:.3g}" for k, v in self.rates.items())
        probe = f" (probe {self.probe_seconds:.1f} s: {rates} img/s)" if self.rates else ""
        return f"aeutils speed ({self.what}): {self.name} [{self.source}]{probe}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoint metadata and logs)."""
        return {"name": self.name, "source": self.source, "rates": dict(self.rates),
                "probe_seconds": self.probe_seconds, "what": self.what}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Choice":
        return cls(name=str(data["name"]), source=str(data.get("source", "resumed")),
                   rates={str(k): float(v) for k, v in dict(data.get("rates", {})).items()},
                   probe_seconds=float(data.get("probe_seconds", 0.0)), what=str(data.get("what", "training")))


def candidate_name(channels_last: bool, amp: bool) -> str:
    """The candidate with these two options."""
    return {(False, False): "fp32", (True, False): "channels_last", (False, True): "bf16",
            (True, True): "channels_last+bf16"}[(bool(channels_last), bool(amp))]


def candidates_for(channels_last: bool | None = None, amp: bool | None = None) -> list[str]:
    """The candidates compatible with forced options (None: either), baseline first."""
    return [n for n in CANDIDATES
            if (channels_last is None or Choice(n).channels_last == channels_last) and (amp is None or Choice(n).amp == amp)]


def env_force() -> str | None:
    """``$MSCOPY_CPU_SPEED``: a candidate name, "probe", or None (unset / "auto")."""
    value = os.environ.get(ENV, "").strip()
    if value in ("", "auto"):
        return None
    if value != "probe" and value not in CANDIDATES:
        raise AeutilsError(f"${ENV}={value!r}: expected auto, probe or one of {', '.join(CANDIDATES)}")
    return value


def cpu_description() -> dict[str, Any]:
    """For reports only (never for a decision): the CPU model name and whether it has AMX-BF16 /
    AVX512-BF16, from ``/proc/cpuinfo`` (unknown elsewhere)."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------------- running


def prepare(x: torch.Tensor, choice: Choice) -> torch.Tensor:
    """``x`` (NxCxHxW) in the choice's memory format."""
    return x.contiguous(memory_format=torch.channels_last) if choice.channels_last else x


@contextmanager
def running(choice: Choice, device: torch.device | str) -> Iterator[None]:
    """Context: bf16 autocast on ``device`` if the choice says so (weights stay fp32)."""
    device = torch.device(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=choice.amp):
        yield


def forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, choice: Choice) -> torch.Tensor:
    """``fn(x)`` under ``choice`` (``x`` converted with :func:`prepare`, autocast per :func:`running`),
    returned as contiguous float32 (NCHW), whatever the choice."""
    with running(choice, x.device):
        y = fn(prepare(x, choice))
    return y.float().contiguous()


# --------------------------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    arms: Mapping[str, Callable[[], Any]], images: int, device: torch.device | str = "cpu", *,
    warmup: int = WARMUP, repeats: int = REPEATS, screen: Mapping[str, Callable[[], Any]] | None = None,
    slow_seconds: float = SLOW_SECONDS,
) -> tuple[dict[str, float], float]:
    """Interleaved timing of ``arms`` (each one call = ``images`` images): ``warmup`` untimed rounds,
    then ``repeats`` timed ones, in alternating order (A B C, C B A, ...).

    ``screen``: the same arms on a smaller input, run first: an arm whose fastest of up to
    :data:`SCREEN_ROUNDS` calls there is more than :data:`SCREEN_FACTOR` x the first arm's (and more
    than ``slow_seconds``) is dropped before any full-size call (rate 0). First calls pay one-time
    costs (oneDNN builds its kernels per shape and layout), so only the suspects are called again.
    Returns (best images/s per arm over its timed calls, wall seconds of the whole measurement): on a
    shared machine the least disturbed call is the truest (other load only ever slows a call down)."""
    device = torch.device(device)
    names = list(arms)
    start = time.perf_counter()

    def timed(fn: Callable[[], Any]) -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    out: list[str] = []
    if screen is not None:
        cost: dict[str, float] = {}
        for r in range(SCREEN_ROUNDS):
            for name in names if r == 0 else [names[0], *out]:
                cost[name] = min(cost.get(name, float("inf")), timed(screen[name]))
            out = [n for n in names[1:] if cost[n] > max(SCREEN_FACTOR * cost[names[0]], slow_seconds)]
            if not out:
                break
    live = [n for n in names if n not in out]
    for i in range(warmup):
        for name in live if i % 2 == 0 else live[::-1]:
            arms[name]()
    times: dict[str, list[float]] = {n: [] for n in live}
    for r in range(max(1, repeats)):
        for name in live if r % 2 == 0 else live[::-1]:
            times[name].append(images / max(timed(arms[name]), 1e-9))
    rates = {n: (max(times[n]) if n in times else 0.0) for n in names}
    return rates, time.perf_counter() - start


def decide(rates: Mapping[str, float], margin: float = MARGIN) -> str:
    """The fastest candidate if it beats the first (baseline) one by ``margin``, else the baseline."""
    names = list(rates)
    best = max(names, key=lambda n: rates[n])
    return best if rates[best] >= margin * rates[names[0]] else names[0]


def _announce(choice: Choice, verbose: bool) -> Choice:
    if verbose:
        print(choice.describe(), flush=True)
    return choice


# --------------------------------------------------------------------------------------------- training


def training_choice(
    make_step: Callable[[Choice], Callable[[torch.Tensor], Any]],
    batch_shape: Sequence[int],
    device: torch.device | str,
    *,
    channels_last: bool | None = None,
    amp: bool | None = None,
    expected_steps: int | None = None,
    time_budget: float | None = None,
    force: str | None = None,
    verbose: bool = True,
) -> Choice:
    """The speed options for a training run of steps on batches of ``batch_shape`` (N, 3, H, W).

    ``make_step(choice)`` returns a fresh ``step(batch)`` for that candidate (its own copy of the model
    and optimiser: the probe must not touch the run's weights). ``channels_last``/``amp``: True/False
    force an option (None: decide). On a non-CPU device: no probe, None means on for CUDA, off
    elsewhere. On the CPU: ``force`` (or ``$MSCOPY_CPU_SPEED``) names a candidate, or "probe";
    otherwise the probe runs unless it would cost more than 1/:data:`PAYS` of the run, estimated from
    ``expected_steps`` and, with a ``time_budget`` (seconds), one timed baseline step. The probe's
    input comes from its own seeded generator: the global RNG streams are not touched.
    """
    device = torch.device(device)
    if device.type != "cpu":
        on = device.type == "cuda"
        cl = on if channels_last is None else channels_last
        forced = channels_last is not None and amp is not None
        return Choice(candidate_name(cl, on if amp is None else amp), "forced" if forced else "device default")
    names = candidates_for(channels_last, amp)
    if len(names) == 1:
        return Choice(names[0], "forced")
    force = force or env_force()
    if force is not None and force != "probe":
        if force not in names:
            raise AeutilsError(f"${ENV}={force}: contradicts the forced options (possible: {', '.join(names)})")
        return _announce(Choice(force, "env"), verbose)
    gen = torch.Generator().manual_seed(12345)
    x = torch.rand(tuple(batch_shape), generator=gen).to(device)
    probe_steps = len(names) * (WARMUP + REPEATS)
    if force != "probe":
        if time_budget is None:
            if expected_steps is not None and expected_steps < PAYS * probe_steps:
                return _announce(Choice(names[0], "short run"), verbose)
        else:
            step = make_step(Choice(names[0]))
            t0 = time.perf_counter()
            step(x)
            t = time.perf_counter() - t0
            run = min(time_budget, expected_steps * t if expected_steps is not None else float("inf"))
            if probe_steps * t > run / PAYS:
                return _announce(Choice(names[0], "short run"), verbose)
    steps = {n: make_step(Choice(n)) for n in names}
    x1 = x[:1]
    rates, seconds = measure({n: (lambda s=s: s(x)) for n, s in steps.items()}, int(batch_shape[0]), device,
                             screen={n: (lambda s=s: s(x1)) for n, s in steps.items()})
    return _announce(Choice(decide(rates), "probe", rates, seconds), verbose)


# --------------------------------------------------------------------------------------------- inference


@dataclass
class _Entry:
    work: int = 0  # input elements run (or announced) so far under this key
    choice: Choice | None = None


_CACHE: dict[tuple[Any, ...], _Entry] = {}


def _model_key(model: nn.Module) -> tuple[Any, ...]:
    """Architecture signature: class and (name, shape, dtype) of every parameter."""
    return (type(model).__name__,) + tuple((n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters())


def clear_cache() -> None:
    """Forget every cached inference choice (tests; after changing threads)."""
    _CACHE.clear()


def inference_choice(
    model: nn.Module,
    example_shape: Sequence[int],
    device: torch.device | str | None = None,
    *,
    expected_batches: int = 1,
    backward: bool = False,
    run: Callable[[torch.Tensor, Choice], torch.Tensor] | None = None,
    force: str | None = None,
    verbose: bool = True,
    probe_shape: Sequence[int] | None = None,
) -> Choice:
    """How to run ``model`` forward (eval mode) on batches of ``example_shape`` (N, C, H, W) on ``device``
    (default: the model's), for a caller about to run ``expected_batches`` such batches.

    ``run(x, choice)`` is the computation to time, run under ``choice`` (default
    ``forward(model, x, choice)``); ``backward=True`` times it plus a backward pass to ``x`` (a loss
    whose input needs gradients) instead of an inference-mode forward. ``probe_shape``: time the
    candidates on inputs of this shape instead (a fully convolutional model whose batches vary or are
    large: a small tile is a cheaper probe with the same ranking); the key and the cost then use it.
    The answer is cached per process for (architecture, probe shape, device, backward). Until a probe has
    run, each call adds ``expected_batches`` x the elements of ``example_shape`` to the key's work; once
    it reaches :data:`PAYS` x the probe's (its calls x the probe shape's elements), the probe runs (CPU
    and CUDA; other devices: fp32).
    Before that, and on other devices, the answer is fp32 (source "not yet paid" / "device default").
    ``force``/``$MSCOPY_CPU_SPEED`` as in :func:`training_choice`. Run under it with :func:`forward`.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    what = "inference+backward" if backward else "inference"
    force = force or env_force()
    if force is not None and force != "probe":
        return Choice(force, "env", what=what)
    if dev.type not in ("cpu", "cuda"):
        return Choice("fp32", "device default", what=what)
    shape = tuple(int(s) for s in (example_shape if probe_shape is None else probe_shape))
    key = (_model_key(model), shape, str(dev), backward)
    entry = _CACHE.setdefault(key, _Entry())
    if entry.choice is not None:
        return entry.choice
    entry.work += max(0, int(expected_batches)) * math.prod(int(s) for s in example_shape)
    probe_work = len(CANDIDATES) * (WARMUP + REPEATS) * math.prod(shape)  # (with the screen's first calls)
    if force != "probe" and entry.work < PAYS * probe_work:
        return Choice("fp32", "not yet paid", what=what)
    names = list(CANDIDATES)
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        names = [n for n in names if not Choice(n).amp]
    fn = run or (lambda x, c: forward(model, x, c))
    gen = torch.Generator().manual_seed(12345)
    x0 = torch.rand(shape, generator=gen).to(dev)

    def arm(choice: Choice, x_in: torch.Tensor) -> Callable[[], Any]:
        def call() -> Any:
            if backward:
                x = x_in.clone().requires_grad_(True)
                fn(x, choice).float().sum().backward()
                return x.grad
            with torch.inference_mode():
                return fn(x_in, choice)
        return call

    was_training = model.training
    model.eval()
    try:
        # a one-image probe is its own screen: the screen's calls have warmed every arm left
        rates, seconds = measure({n: arm(Choice(n), x0) for n in names}, shape[0], dev,
                                 screen={n: arm(Choice(n), x0[:1]) for n in names},
                                 warmup=0 if shape[0] == 1 else WARMUP)
    finally:
        model.train(was_training)
    entry.choice = _announce(Choice(decide(rates), "probe", rates, seconds, what=what), verbose)
    return entry.choice


def copy_for(model: nn.Module, choice: Choice) -> nn.Module:
    """A deep copy of ``model`` in the choice's memory format (for a probe arm or a dedicated copy)."""
    m = copy.deepcopy(model)
    return m.to(memory_format=torch.channels_last) if choice.channels_last else m
