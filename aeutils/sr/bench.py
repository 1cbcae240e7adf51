"""The SR content-loss comparison: which content loss makes a better x4 H&E super-resolver?

Pixel MSE alone against MSE + one content term per *arm*, every arm the same small
:class:`aeutils.sr.network.SRNet`, seed, training data and steps (:func:`run`; ``bench/sr_losses.py`` is the
command line over it, notebook 05 calls it):

* ``mse``: pixel MSE alone; ``encoding``: + :class:`aeutils.losses.EncodingLoss` (the shipped encoder, or
  ``checkpoint=``); ``random``: + the same loss through a randomly initialised encoder of the same
  architecture (what training the encoder adds); ``imagenet``: + EfficientNet-Lite0 ImageNet features;
  ``vgg16``: + VGG16 relu2_2 (ImageNet-initialised, HED edge-fine-tuned); ``vgg19``: + VGG19 relu3_1
  (only with a local torchvision file). The ImageNet arms need the ``[baselines]`` extra
  (:mod:`aeutils.losses.imagenet`) and are skipped with the reason when absent.

The pieces, one idea each: :mod:`aeutils.sr.search` (the arms, the weight search and the validation rule),
:mod:`aeutils.metrics.judges` (the judges, bootstrap intervals), :mod:`aeutils.sr.curves` (every trained weight
judged on the test images, the matched-distortion headline, the perception-distortion figure),
:mod:`aeutils.sr.report` (goal, tables, figures). This module loads the images and runs it all.

Test images: every test-region tile of both bundled slides (``eval_size`` px, non-overlapping; the roles of
:mod:`aeutils.data`), judged per slide and pooled; or a folder of your own (``eval_images``). Images are
level-0 RGB (~0.5 um/px); LR inputs are antialiased bicubic x4 downsamples (~2 um/px).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from aeutils.metrics.judges import JUDGES, LOWER_IS_BETTER, MIN_SIDE, Judges, bootstrap
from aeutils.sr.report import (  # noqa: F401  (re-exported: one import for the bench's users)
    HAARPSI_BUDGET, STLPIPS_MARGIN, compact_table, crops_figure, format_table, goal, goal_line, tradeoff_figure,
)
from aeutils.sr.search import (  # noqa: F401
    ARMS, CHOICE_BUDGET_DB, CURVE_SPAN_DB, DEFAULT_STEPS, ENCODER_ARMS, GRID, GRID_DOWN, IMAGENET_ARMS, NORMALIZES,
    PSNR_BUDGET_DB, TAPS, build_content_losses, choose, choose_threads, choose_weight, matched_weight, weight_search,
)

__all__ = [
    "ARMS", "IMAGENET_ARMS", "ENCODER_ARMS", "GRID", "GRID_DOWN", "TAPS", "NORMALIZES", "PSNR_BUDGET_DB",
    "CHOICE_BUDGET_DB", "CURVE_SPAN_DB", "HAARPSI_BUDGET", "STLPIPS_MARGIN", "DEFAULT_STEPS", "JUDGES", "LOWER_IS_BETTER",
    "SRBenchResult", "cpu_name", "Judges", "bootstrap", "load_eval_images", "bundled", "test_tiles",
    "build_content_losses", "matched_weight", "choose", "choose_weight", "weight_search", "goal", "choose_threads",
    "crops_figure", "tradeoff_figure", "run", "format_table", "compact_table", "goal_line",
]


@dataclass
class SRBenchResult:
    """What :func:`run` measured. ``table``: one row per method (bicubic and each arm's chosen model) on all
    test images, judges as mean with 95 % bootstrap bounds (``<judge>``, ``<judge>_lo``, ``<judge>_hi``), each
    arm's chosen ``weight`` and ``setting``; ``tables``: the same per group of test images (each bundled slide)
    and ``"pooled"``; ``val``: every (arm, setting, weight) trained, with validation means; ``curves``: the same
    points with test means (``chosen`` marks validation's choice, ``folder`` their outputs under ``outputs``);
    ``headline``: the matched-distortion comparison (:func:`aeutils.sr.curves.headline`); ``chosen``: paired
    differences of the chosen points (:func:`aeutils.sr.curves.chosen_differences`); ``skipped``: arm -> reason;
    ``goal``: the goal's parts (:func:`aeutils.sr.report.goal`)."""

    table: Any
    val: Any
    weights: dict[str, float]
    skipped: dict[str, str]
    goal: dict[str, Any]
    per_image: dict[str, dict[str, np.ndarray]]
    seconds: float
    cpu: str
    steps: int
    n_test: int
    outputs: Path | None = None
    train_seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    images: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    curves: Any = None
    headline: Any = None
    chosen: Any = None
    groups: list[str] = field(default_factory=list)


def cpu_name() -> str:
    """The CPU model name, torch's thread count and whether the CPU has AVX512_BF16 / AMX (from
    :func:`aeutils.speed.cpu_description`)."""
    from aeutils.speed import cpu_description

    d = cpu_description()
    yes = lambda flag: "yes" if d[flag] else "no"  # noqa: E731
    return f"{d['model']}, {d['threads']} thread(s), AVX512_BF16 {yes('avx512_bf16')}, AMX {yes('amx_bf16')}"


# ----------------------------------------------------------------------------------------------- data


def load_eval_images(folder: str | Path) -> tuple[list[str], list[torch.Tensor]]:
    """Every PNG/JPEG of ``folder`` (sorted) as 3xHxW float RGB in [0, 1], cropped top-left to multiples of
    4 pixels. Raises :class:`~aeutils.errors.PatchError` naming a bad file: unreadable, or smaller than
    :data:`~aeutils.metrics.judges.MIN_SIDE` px after the crop (every judge's minimum; checked before any training)."""
    from PIL import Image

    from aeutils.errors import PatchError

    folder = Path(folder)
    if not folder.is_dir():
        raise PatchError(f"{folder}: no such folder of images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise PatchError(f"{folder}: no PNG/JPEG images")
    names, images = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                rgb = np.asarray(im.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file
            raise PatchError(f"{p}: unreadable image ({str(exc).splitlines()[0][:120]})") from None
        h, w = (rgb.shape[0] // 4) * 4, (rgb.shape[1] // 4) * 4
        if min(h, w) < MIN_SIDE:
            raise PatchError(f"{p}: {rgb.shape[1]}x{rgb.shape[0]} px is too small (the judges need >= {MIN_SIDE} px "
                             f"after cropping to multiples of 4; 128 px or more advised)")
        names.append(p.stem)
        images.append(torch.from_numpy(rgb[:h, :w].copy()).permute(2, 0, 1).float() / 255.0)
    return names, images


def bundled(split: str, n_per_slide: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n_per_slide`` level-0 patches of ``size`` px from the ``split`` role ("train", "val", "test")
    of each bundled slide, concatenated: (2 * n_per_slide)x3xSxS in [0, 1]."""
    from aeutils.data import sample_patches
    from aeutils.sample import SAMPLES

    return torch.cat([sample_patches(n_per_slide, size, split=split, seed=seed, slide=i) for i in range(len(SAMPLES))])


def test_tiles(size: int, n_per_slide: int | None = None, seed: int = 0) -> tuple[list[str], list[torch.Tensor], list[str]]:
    """The test-region tiles of the bundled slides: every non-overlapping ``size``-px tissue tile of the
    "test" role of each slide (``n_per_slide``: at most that many per slide). Returns (names, 3xSxS images
    in [0, 1], the slide stem of each)."""
    from aeutils.data import _sample_cells, sample_patches
    from aeutils.sample import SAMPLES

    names, images, groups = [], [], []
    for i, info in enumerate(SAMPLES):
        n = len(_sample_cells(size, "test", size, i))  # every tile of the role, the data module's own grid
        n = n if n_per_slide is None else min(n, n_per_slide)
        if n == 0:
            continue
        stem = Path(info.name).stem
        for k, x in enumerate(sample_patches(n, size, split="test", seed=seed, slide=i)):
            names.append(f"{stem}_{k:03d}")
            images.append(x)
            groups.append(stem)
    return names, images, groups


# ----------------------------------------------------------------------------------------------- run


def _judge(judges: Judges, outs: list[torch.Tensor], hrs: list[torch.Tensor]) -> dict[str, np.ndarray]:
    if len({tuple(x.shape) for x in hrs}) == 1:  # one batched call (ST-LPIPS dominates the judging time)
        return judges(torch.stack(outs), torch.stack(hrs))
    js = [judges(s[None], h[None]) for s, h in zip(outs, hrs)]
    return {k: np.concatenate([j[k] for j in js]) for k in JUDGES}


def _searches(specs: list[dict[str, Any]], workers: int, judges: Judges,
              losses: dict[str, dict[str, torch.nn.Module]]) -> list[dict[str, Any]]:
    """Every arm's search, in ``workers`` processes (longest first) or here."""
    from aeutils.sr.search import search_arm

    if workers <= 1:
        return [search_arm(sp, judges, losses[sp["arm"]]) for sp in specs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    cost = {"vgg16": 0, "vgg19": 1, "random": 2, "encoding": 3, "imagenet": 4}
    order = sorted(specs, key=lambda sp: cost.get(sp["arm"], 5))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        done = dict(zip([sp["arm"] for sp in order], pool.map(search_arm, order)))
    return [done[sp["arm"]] for sp in specs]


def run(
    *,
    steps: int = DEFAULT_STEPS,
    eval_images: str | Path | None = None,
    out: str | Path | None = None,
    arms: Sequence[str] = ARMS,
    grid: Sequence[float] = GRID,
    grid_down: Sequence[float] = GRID_DOWN,
    taps: Sequence[str] = TAPS,
    normalizes: Sequence[str] = NORMALIZES,
    n_train: int = 64,
    hr_size: int = 64,
    n_val: int = 12,
    n_test: int | None = None,
    eval_size: int = 128,
    batch_size: int = 4,
    channels: int = 16,
    n_blocks: int = 2,
    vgg19_weights: str | None = None,
    checkpoint: str | Path | None = None,
    threads: int | None = None,
    workers: int | None = None,
    test: bool = True,
    seed: int = 0,
    n_boot: int = 1000,
    quiet: bool = False,
) -> SRBenchResult:
    """Train every arm at every weight of the search, choose each arm's setting and weight on validation
    (:func:`aeutils.sr.search.choose`), judge every trained model on the test images (``eval_images``, else
    every test-region tile of the bundled slides, at most ``n_test`` per slide; ``test=False``: validation
    only, the tables then hold validation numbers), and compare the curves at matched distortion.

    ``n_train``/``n_val`` are patches per bundled slide; ``hr_size`` (training crops) and ``eval_size`` are
    level-0 pixels, multiples of 4. ``workers``: processes the arms' searches run in (None: up to 2, as many
    as the CPU has cores; one thread each); with one worker, ``threads`` is torch's CPU thread count (None: the
    faster of 1 and torch's default, measured by :func:`choose_threads`). Every run is seeded alike. With
    ``out``: ``hr/``, ``bicubic/``, ``<arm>/`` (chosen models), ``curves/<label>/`` (every trained model) of
    PNGs named like the test images, ``curves.csv``, ``per_image.csv`` (every model's judges per test image), ``headline.csv``, ``crops.png``, ``tradeoff.png``
    (validation) and ``pd.png`` (test curves). Returns :class:`SRBenchResult`.
    """
    import pandas as pd

    from aeutils.io import atomic_write_text
    from aeutils.sr import curves as C
    from aeutils.sr.degrade import downscale, upscale_bicubic
    from aeutils.sr.network import super_resolve
    from aeutils.sr.report import save_png
    from aeutils.sr.search import sr_model

    say = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    t0 = time.perf_counter()
    arms = tuple(arms)
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ValueError(f"unknown arms {bad}; arms are {ARMS}")
    if not test:
        val_t = bundled("val", n_val, eval_size, seed)
        names, test_list, groups = [f"val{i:03d}" for i in range(len(val_t))], list(val_t), ["validation"] * len(val_t)
    elif eval_images is not None:
        names, test_list = load_eval_images(eval_images)  # refuses bad files before any training
        groups = [Path(eval_images).name or "eval"] * len(names)
    else:
        names, test_list, groups = test_tiles(eval_size, n_test, seed)
    judges = Judges()
    train = bundled("train", n_train, hr_size, seed)
    val = bundled("val", n_val, eval_size, seed)
    losses, skipped = build_content_losses(arms, vgg19_weights=vgg19_weights, checkpoint=checkpoint, taps=taps,
                                           normalizes=normalizes, say=say)
    threads_before = torch.get_num_threads()
    if workers is None:
        workers = max(1, min(os.cpu_count() or 1, len(losses), 2))
    if workers > 1:
        threads = 1  # one thread per process: the processes use the cores
    if threads is None:
        probe = next(iter(losses["encoding"].values())) if "encoding" in losses else None
        threads, per_step = choose_threads(train, probe, batch_size=batch_size, channels=channels, n_blocks=n_blocks)
        say("threads: " + ", ".join(f"{n}: {s * 1e3:.0f} ms/step" for n, s in per_step.items()) + f" -> {threads}")
    torch.set_num_threads(threads)
    out_dir = Path(out) if out is not None else None
    try:
        n_settings = sum(len(v) for v in losses.values())
        say(f"{len(train)} training patches ({hr_size} px), {len(val)} validation, {len(test_list)} "
            f"{'test' if test else 'validation (test=False)'} images; mse + {n_settings} arm settings, each over "
            f"the weight search; {steps} steps per run; {workers} process(es) x {threads} thread(s); CPU: {cpu_name()}")
        spec = dict(train=train, val=val, steps=steps, seed=seed, batch_size=batch_size, channels=channels,
                    n_blocks=n_blocks, threads=threads, quiet=quiet)
        from aeutils.sr.search import search_arm

        outs = [search_arm({**spec, "arm": "mse"}, judges)]
        mse_psnr = outs[0]["rows"][0]["psnr"]
        specs = [{**spec, "arm": arm, "mse_psnr": mse_psnr, "grid": tuple(grid), "grid_down": tuple(grid_down),
                  "checkpoint": None if checkpoint is None else str(checkpoint), "taps": tuple(taps),
                  "normalizes": tuple(normalizes), "vgg19_weights": vgg19_weights} for arm in losses]
        outs += _searches(specs, workers, judges, losses)
        arm_names = ["mse", *losses]
        weights = {a: o["weight"] for a, o in zip(arm_names, outs)}
        settings = {a: o["setting"] for a, o in zip(arm_names, outs)}
        chosen_label = {a: o["label"] for a, o in zip(arm_names, outs)}
        val_df = pd.DataFrame([r for o in outs for r in o["rows"]])
        train_seconds = {k: v for o in outs for k, v in o["seconds"].items()}
        # every trained model on the test images: outputs written as they are made, the chosen ones kept
        lr_test = [downscale(x[None]) for x in test_list]
        images: dict[str, list[torch.Tensor]] = {"hr": test_list, "bicubic": [upscale_bicubic(lr)[0] for lr in lr_test]}
        per_label: dict[str, dict[str, np.ndarray]] = {}
        for arm, o in zip(arm_names, outs):
            for label, state in o["states"].items():
                model = sr_model(state, channels, n_blocks)
                srs = [super_resolve(model, lr)[0] for lr in lr_test]
                per_label[label] = _judge(judges, srs, test_list)
                if out_dir is not None:
                    for name, x in zip(names, srs):
                        save_png(x, out_dir / "curves" / label / f"{name}.png")
                if label == chosen_label[arm]:
                    images[arm] = srs
        per_image = {"bicubic": _judge(judges, images["bicubic"], test_list),
                     **{arm: per_label[chosen_label[arm]] for arm in arm_names}}
    finally:
        cpu = cpu_name()
        torch.set_num_threads(threads_before)
    if out_dir is not None:  # the raw judgements first: every table and headline can be recomputed from them
        long = pd.concat([pd.DataFrame({"label": lab, "image": names, "group": groups, **vals})
                          for lab, vals in {**per_label, "bicubic": per_image["bicubic"]}.items()])
        atomic_write_text(out_dir / "per_image.csv", long.to_csv(index=False, float_format="%.6g"))
    table = bootstrap(per_image)
    table.insert(0, "setting", [""] + [settings[m] for m in arm_names])
    table.insert(0, "weight", [np.nan] + [weights[m] for m in arm_names])
    tables = {"pooled": table}
    group_names = list(dict.fromkeys(groups))
    if len(group_names) > 1:
        for gname in group_names:
            keep = np.array([g == gname for g in groups])
            tables[gname] = bootstrap({m: {j: v[keep] for j, v in pi.items()} for m, pi in per_image.items()})
    points = val_df[["arm", "setting", "multiple", "weight", "label"]].copy()
    points["chosen"] = [chosen_label[a] == lab for a, lab in zip(points["arm"], points["label"])]
    points["folder"] = [f"curves/{lab}" for lab in points["label"]]
    curves = C.curve_points(points, per_label)
    head = C.headline(curves, per_label, settings, n_boot=n_boot, seed=seed) if test else pd.DataFrame()
    chosen = C.chosen_differences(per_image, n_boot=2 * n_boot, seed=seed) if test else pd.DataFrame()
    if out_dir is not None:
        import matplotlib.pyplot as plt

        for method, ims in images.items():
            for name, x in zip(names, ims):
                save_png(x, out_dir / method / f"{name}.png")
        atomic_write_text(out_dir / "curves.csv", curves.to_csv(index=False, float_format="%.6g"))
        atomic_write_text(out_dir / "headline.csv", head.to_csv(index=False, float_format="%.6g"))
        plt.close(crops_figure(images, out_dir / "crops.png"))
        plt.close(tradeoff_figure(val_df, out_dir / "tradeoff.png"))
        plt.close(C.pd_figure(curves, settings, out_dir / "pd.png"))
    return SRBenchResult(
        table=table, val=val_df, weights=weights, skipped=skipped, goal=goal(table) if test else {},
        per_image=per_image, seconds=time.perf_counter() - t0, cpu=cpu, steps=steps, n_test=len(test_list),
        outputs=out_dir, train_seconds=train_seconds, settings=settings, threads=threads, images=images,
        tables=tables, curves=curves, headline=head, chosen=chosen, groups=groups,
    )
