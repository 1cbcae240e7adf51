"""What the SR comparison prints and draws: the goal, tables (text and a compact DataFrame with the best per
judge marked) and figures (validation trade-off, crops). The perception-distortion curves are
:mod:`aeutils.sr.curves`'."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from aeutils.metrics.judges import JUDGES, LABELS, LOWER_IS_BETTER
from aeutils.sr.search import CHOICE_BUDGET_DB, IMAGENET_ARMS, PSNR_BUDGET_DB

__all__ = ["HAARPSI_BUDGET", "STLPIPS_MARGIN", "goal", "goal_line", "format_table", "compact_table", "best_methods",
           "crops_figure", "tradeoff_figure", "save_png", "saved"]

#: the goal's HaarPSI budget: encoding's test HaarPSI within this of mse's
HAARPSI_BUDGET = 0.005
#: the goal: encoding's ST-LPIPS this fraction below the better of mse and random
STLPIPS_MARGIN = 0.05


def goal(table: Any) -> dict[str, Any]:
    """The goal, part by part, from a test table (index: methods; judge columns): ``stlpips_vs_best_of_mse_random``
    (relative, target <= -STLPIPS_MARGIN), ``psnr_cost_db`` and ``haarpsi_cost`` (vs mse; budgets
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
    return (f"goal (chosen points): encoding ST-LPIPS {g['stlpips_vs_best_of_mse_random']:+.1%} vs the better of mse/random "
            f"(target <= -{STLPIPS_MARGIN:.0%}); costs {g['psnr_cost_db']:+.2f} dB PSNR, {g['haarpsi_cost']:+.4f} HaarPSI "
            f"vs mse (budget {PSNR_BUDGET_DB} dB, {HAARPSI_BUDGET}; chosen within {CHOICE_BUDGET_DB:g} dB on validation); "
            f"{im}goal {'MET' if g['met'] else 'NOT met'}")


def _fmt(judge: str, v: float, digits: int = 3) -> str:
    return f"{v:.2f}" if judge == "psnr" else f"{v:.{digits}f}"


def best_methods(table: Any, judges: Sequence[str] = JUDGES, exclude: Sequence[str] = ("bicubic",)) -> dict[str, str]:
    """judge -> the method with the best mean (lower for :data:`~aeutils.metrics.judges.LOWER_IS_BETTER`),
    among the table's rows but ``exclude``."""
    rows = table.drop(index=[m for m in exclude if m in table.index])
    return {j: str(rows[j].idxmin() if j in LOWER_IS_BETTER else rows[j].idxmax()) for j in judges}


def compact_table(table: Any, judges: Sequence[str] = JUDGES, digits: int = 3) -> Any:
    """DataFrame, one row per judge (short name, arrow: which way is better), one column per method:
    ``"mean [low, high]"`` (95 % bootstrap; PSNR in dB with 2 decimals, the others with ``digits``), ``*`` after
    the best arm's (bicubic excluded). Narrow enough for a notebook (about 150 px per method)."""
    import pandas as pd

    best = best_methods(table, judges)
    rows = {}
    for j in judges:
        arrow = "\u2193" if j in LOWER_IS_BETTER else "\u2191"
        rows[f"{LABELS[j]} {arrow}"] = {
            m: f"{_fmt(j, r[j], digits)} [{_fmt(j, r[j + '_lo'], digits)}, {_fmt(j, r[j + '_hi'], digits)}]"
               + (" *" if best[j] == m else "")
            for m, r in table.iterrows()}
    out = pd.DataFrame(rows).T
    out.columns.name = "judge (95 % CI), * best arm"
    return out


def format_table(table: Any, judges: Sequence[str] = JUDGES) -> str:
    """The test table as text: each arm's chosen weight and setting, then one row per judge with every
    method's mean [95 % interval] (:func:`compact_table`, 4 decimals), ``*`` marking the best arm."""
    lines = []
    if "weight" in table.columns:
        lines.append("chosen: " + "; ".join(f"{m} {'' if not np.isfinite(r['weight']) else f'w={r.weight:.3g}'} {r.get('setting', '')}".strip()
                                            for m, r in table.iterrows() if m != "bicubic"))
    lines.append(compact_table(table, judges, digits=4).to_string())
    return "\n".join(lines)


def save_png(x: torch.Tensor, path: Path) -> None:
    """One 3xHxW image in [0, 1] written as an 8-bit PNG, atomically."""
    from PIL import Image

    from aeutils.io import atomic_path

    arr = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def saved(fig: Any, path: Path | None) -> Any:
    """``fig``, written to ``path`` as a PNG (atomically) if a path is given."""
    if path is not None:
        from aeutils.io import atomic_path

        with atomic_path(path) as tmp:  # makes the parent folder
            fig.savefig(tmp, dpi=110, format="png")
    return fig


def crops_figure(images: dict[str, list[torch.Tensor]], path: Path | None = None, n: int = 3, side: int = 64) -> Any:
    """Rows: the first ``n`` test images; columns: hr, bicubic, each arm; the same centre crop
    (``side`` px) in every column. Saved to ``path`` (PNG) if given; returns the figure."""
    import matplotlib.pyplot as plt

    methods = list(images)
    n = min(n, len(images["hr"]))
    fig, axes = plt.subplots(n, len(methods), figsize=(1.3 * len(methods), 1.3 * n + 0.4), squeeze=False)
    s = side
    for i in range(n):
        h, w = images["hr"][i].shape[-2:]
        s = min(side, h, w)
        top, left = (h - s) // 2, (w - s) // 2
        for j, m in enumerate(methods):
            ax = axes[i][j]
            ax.imshow(images[m][i][:, top : top + s, left : left + s].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(m, fontsize=9)
    fig.suptitle(f"x4 SR, {s} px centre crops (0.5 um/px): closer to hr is better", fontsize=10)
    fig.tight_layout()
    return saved(fig, path)


def tradeoff_figure(val: Any, path: Path | None = None) -> Any:
    """Validation perception-distortion plane of every (arm, setting, weight) tried (``val``: the
    :attr:`~aeutils.sr.bench.SRBenchResult.val` DataFrame): x PSNR (dB, right is better), y ST-LPIPS (down is
    better), one line per arm and setting through its weights, ``mse`` a star, the choice budget a dashed
    line. Saved to ``path`` if given; returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    mse = val[val["arm"] == "mse"].iloc[0]
    ax.plot([mse["psnr"]], [mse["stlpips"]], "k*", ms=12, label="mse")
    for (arm, setting), g in val[val["arm"] != "mse"].groupby(["arm", "setting"], sort=False):
        g = g.sort_values("multiple")
        ax.plot(g["psnr"], g["stlpips"], "o-", label=f"{arm} {setting}".strip())
    lo, hi = ax.get_xlim()
    if mse["psnr"] - CHOICE_BUDGET_DB > lo:
        ax.axvline(mse["psnr"] - CHOICE_BUDGET_DB, color="grey", ls="--", lw=1, label=f"choice budget ({CHOICE_BUDGET_DB:g} dB)")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("validation PSNR, dB (higher is better \u2192)", fontsize=10)
    ax.set_ylabel("validation ST-LPIPS (\u2193 lower is better)", fontsize=10)
    ax.set_title("validation: every arm over its weights (best: bottom right)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return saved(fig, path)
