"""The GAN regime of the content-loss comparison: SRGAN (:func:`aeutils.sr.train.train_srgan`) with each content
loss against a pixel-loss SRResNet, where the field uses a content loss (``bench/sr_gan.py``).

One pixel (MSE) pretraining of the :class:`~aeutils.sr.arch.Generator` on patches of the bundled slides' training
regions (the roles of :mod:`aeutils.data`; best validation PSNR kept: ``pixel.pt``), then every *arm* starts
from that same generator, seed and data and trains the same number of steps at the GAN phase's learning rates:

* ``pixel``: pixel MSE alone (no discriminator): the pixel-loss SRResNet, trained as long as the others;
* ``encoding`` / ``random`` / ``imagenet`` / ``vgg16``: SRGAN: MSE + content (the histology encoder, the same
  encoder with random weights, EfficientNet-Lite0, VGG16 HED; at train_srgan's matched weight: the content term
  equals MSE on bicubic upsamples of the validation patches, so no test image chooses it) + 1e-3 adversarial.

Each arm's final generator (same steps for all; no checkpoint chosen) is judged on every test-region tile of
both bundled slides by every judge of :mod:`aeutils.metrics.judges`, per slide and pooled, with paired
bootstrap intervals, and ``encoding`` against each other arm (:func:`aeutils.sr.curves.chosen_differences`).
Arms train (and judge) in up to 2 one-thread processes; the ImageNet arms are skipped with the reason when the
``[baselines]`` extra is missing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["GAN_ARMS", "SIZES", "GanBenchResult", "bundled_patches", "run_gan"]

#: the arms: the pixel-loss SRResNet, then SRGAN with each content loss
GAN_ARMS = ("pixel", "encoding", "random", "imagenet", "vgg16")
#: run sizes: "cpu" (2 one-thread processes: 585 s in all on an Intel Xeon with 2 cores shared with other jobs), "paper" (SRGAN's generator and crops,
#: on a GPU), "tiny" (tests). Keys are SRConfig fields plus ``patch_size`` (extracted patches, px) and
#: ``eval_size`` (test tiles, px).
SIZES: dict[str, dict[str, Any]] = {
    "cpu": dict(preset="cpu", hr_size=64, batch_size=8, pretrain_steps=1000, gan_steps=400, val_every=100,
                val_limit=16, patch_size=128, eval_size=128),
    "paper": dict(preset="paper", hr_size=96, batch_size=16, pretrain_steps=4000, gan_steps=2000, val_every=500,
                  val_limit=64, patch_size=128, eval_size=128),
    "tiny": dict(preset="tiny", hr_size=32, batch_size=2, pretrain_steps=3, gan_steps=3, val_every=3,
                 val_limit=2, patch_size=64, eval_size=64),
}


@dataclass
class GanBenchResult:
    """What :func:`run_gan` measured. ``table``: one row per method (``bicubic``, ``pretrained`` (the shared
    start), each arm) on all test tiles: every judge's mean and 95 % paired-bootstrap bounds
    (``<judge>``, ``_lo``, ``_hi``); ``tables``: the same per slide and ``"pooled"``; ``diffs``: ``encoding``
    against each other method (:func:`aeutils.sr.curves.chosen_differences`: PSNR in dB, others relative);
    ``content_weights``: arm -> the matched weight used; ``skipped``: arm -> reason; ``seconds``: wall time;
    ``train_seconds``: arm -> its training seconds."""

    table: Any
    tables: dict[str, Any]
    diffs: Any
    per_image: dict[str, dict[str, np.ndarray]]
    groups: list[str]
    content_weights: dict[str, float]
    skipped: dict[str, str]
    size: str
    steps: tuple[int, int]
    n_test: int
    cpu: str
    seconds: float
    train_seconds: dict[str, float] = field(default_factory=dict)
    out: Path | None = None


def bundled_patches(out: Path, patch_size: int, quiet: bool = True) -> Path:
    """Extract the bundled slides into ``out`` (``patch_size`` px, stride half of it, level 0 at an assumed
    0.5 um/px, as the shipped generator's run did); resumes / returns at once when already there."""
    from aeutils.patches.extraction import extract
    from aeutils.sample import sample_slides

    extract([str(p) for p in sample_slides()], out, patch_size=patch_size, stride=patch_size // 2, assume_mpp=0.5,
            workers=1, progress=False, log=(lambda s: None) if quiet else None)
    return out


def _sr_tiles(model: torch.nn.Module, tiles: list[torch.Tensor], batch: int = 16) -> list[torch.Tensor]:
    from aeutils.sr.degrade import downscale

    outs: list[torch.Tensor] = []
    with torch.no_grad():
        for i in range(0, len(tiles), batch):
            hr = torch.stack(tiles[i:i + batch])
            outs += list(model(downscale(hr)).float().clamp(0, 1))
    return outs


def _judge_generator(path: Path, eval_size: int, n_test: int | None) -> dict[str, np.ndarray]:
    from aeutils.metrics.judges import Judges
    from aeutils.sr.bench import test_tiles
    from aeutils.sr.checkpoint import load_generator

    _, tiles, _ = test_tiles(eval_size, n_test)
    return Judges()(torch.stack(_sr_tiles(load_generator(path).model, tiles)), torch.stack(tiles))


def _arm_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one arm (a spawned process, one thread) and judge its final generator on the test tiles."""
    from aeutils.sr.config import SRConfig
    from aeutils.sr.train import train_srgan

    torch.set_num_threads(job["threads"])
    t0 = time.perf_counter()
    r = train_srgan(job["patches"], job["run"], SRConfig.from_dict(job["config"]))
    seconds = time.perf_counter() - t0
    from aeutils.sr.checkpoint import load_generator

    cw = float(load_generator(Path(job["run"]) / "last.pt").meta["train_args"]["content_weight"])
    if job.get("say"):
        print(f"{job['arm']}: trained {r.step} steps in {seconds:.0f} s (content weight {cw:.4g}); judging", flush=True)
    return {"arm": job["arm"], "seconds": seconds, "content_weight": cw,
            "per_image": _judge_generator(Path(job["run"]) / "last.pt", job["eval_size"], job["n_test"])}


def run_gan(
    out: str | Path,
    *,
    size: str = "cpu",
    arms: Sequence[str] = GAN_ARMS,
    n_test: int | None = None,
    workers: int | None = None,
    device: str | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    quiet: bool = False,
    **overrides: Any,
) -> GanBenchResult:
    """Run the GAN-regime comparison into ``out`` (``patches/``, ``runs/pretrain``, ``runs/<arm>``,
    ``per_image.csv``, ``table.csv``, ``diffs.csv``; rerunning resumes every finished step) and return
    :class:`GanBenchResult`. ``size``: a key of :data:`SIZES`; ``overrides``: its keys (SRConfig fields,
    ``patch_size``, ``eval_size``). ``n_test``: at most that many test tiles per slide (None: every one).
    ``workers``: processes the arms run in (None: up to 2 on CPU, 1 on a GPU; one thread each on CPU)."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    import pandas as pd

    from aeutils.io import atomic_write_text
    from aeutils.metrics.judges import Judges, bootstrap
    from aeutils.sr.bench import cpu_name, test_tiles
    from aeutils.sr.config import SRConfig
    from aeutils.sr.curves import chosen_differences
    from aeutils.sr.degrade import downscale, upscale_bicubic
    from aeutils.sr.search import build_content_losses
    from aeutils.sr.train import train_srgan

    say = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    t0 = time.perf_counter()
    if size not in SIZES:
        raise ValueError(f"size {size!r}: choose from {', '.join(SIZES)}")
    bad = [a for a in arms if a not in GAN_ARMS]
    if bad:
        raise ValueError(f"unknown arms {bad}; arms are {GAN_ARMS}")
    knobs = {**SIZES[size], **overrides}
    patch_size, eval_size = knobs.pop("patch_size"), knobs.pop("eval_size")
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    threads = None if cuda else 1
    speed = {} if cuda else {"channels_last": True, "amp": True}  # fixed: no per-arm speed probe, every arm alike
    base = SRConfig(**knobs, seed=seed, device=device, threads=threads, progress=False, verbose=not quiet, **speed)
    out = Path(out)
    # the ImageNet arms only where their extra imports (the reason printed otherwise)
    skipped: dict[str, str] = {}
    for arm in [a for a in arms if a in ("imagenet", "vgg16")]:
        _, sk = build_content_losses([arm], say=lambda s: None)
        skipped.update(sk)
    for arm, why in skipped.items():
        say(f"skipped {arm}: {why}")
    arms = [a for a in arms if a not in skipped]
    names, tiles, groups = test_tiles(eval_size, n_test, seed)
    say(f"GAN regime ({size}): {base.pretrain_steps} pixel steps once, then {base.gan_steps} steps per arm "
        f"({', '.join(arms)}), batch {base.batch_size}, HR {base.hr_size} px, preset {base.preset}; "
        f"{len(tiles)} test tiles of {eval_size} px; CPU: {cpu_name()}")
    patches = bundled_patches(out / "patches", patch_size)
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        tp = time.perf_counter()
        pre = train_srgan(patches, out / "runs" / "pretrain",
                          base.replace(gan_steps=0, content="none", adversarial=0.0))
        init = out / "runs" / "pretrain" / "pixel.pt"
        train_seconds = {"pretrain": time.perf_counter() - tp}
        say(f"pretraining: {pre.step} pixel steps in {train_seconds['pretrain']:.0f} s; every arm starts from {init}")
        jobs = []
        for arm in arms:
            cfg = base.replace(pretrain_steps=0, init=str(init), content="none" if arm == "pixel" else arm,
                               adversarial=0.0 if arm == "pixel" else base.adversarial)
            jobs.append({"arm": arm, "patches": str(patches), "run": str(out / "runs" / arm), "config": cfg.to_dict(),
                         "threads": threads or torch.get_num_threads(), "eval_size": eval_size, "n_test": n_test,
                         "say": not quiet})
        if workers is None:
            workers = 1 if cuda else max(1, min(os.cpu_count() or 1, 2, len(jobs)))
        if workers > 1:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                done = list(pool.map(_arm_job, jobs))
        else:
            done = [_arm_job(j) for j in jobs]
        judges = Judges()
        hr = torch.stack(tiles)
        per_image = {"bicubic": judges(upscale_bicubic(downscale(hr)).clamp(0, 1), hr),
                     "pretrained": _judge_generator(init, eval_size, n_test)}
        per_image.update({d["arm"]: d["per_image"] for d in done})
    finally:
        torch.set_num_threads(before)
    train_seconds.update({d["arm"]: d["seconds"] for d in done})
    table = bootstrap(per_image, n=n_boot, seed=seed)
    tables = {"pooled": table}
    for g in dict.fromkeys(groups):
        keep = np.array([x == g for x in groups])
        tables[g] = bootstrap({m: {j: v[keep] for j, v in pi.items()} for m, pi in per_image.items()}, n=n_boot, seed=seed)
    from aeutils.metrics.judges import JUDGES

    with np.errstate(divide="ignore", invalid="ignore"):  # a relative error of a zero mean (no nuclei miscounted) is NaN
        diffs = chosen_differences(per_image, reference="encoding", judges=JUDGES, n_boot=n_boot, seed=seed)
    long = pd.concat([pd.DataFrame({"method": m, "image": names, "group": groups, **v}) for m, v in per_image.items()])
    atomic_write_text(out / "per_image.csv", long.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / "table.csv", pd.concat(tables, names=["group"]).to_csv(float_format="%.6g"))
    atomic_write_text(out / "diffs.csv", diffs.to_csv(index=False, float_format="%.6g"))
    return GanBenchResult(table=table, tables=tables, diffs=diffs, per_image=per_image, groups=groups,
                          content_weights={d["arm"]: d["content_weight"] for d in done}, skipped=skipped, size=size,
                          steps=(base.pretrain_steps, base.gan_steps), n_test=len(tiles), cpu=cpu_name(),
                          seconds=time.perf_counter() - t0, train_seconds=train_seconds, out=out)
