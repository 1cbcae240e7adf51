"""Perception-distortion curves of the SR comparison: every trained weight of every arm judged on the test
images (the choice stays on validation; the curves are a report), and the headline comparison at matched
distortion.

A *point* is one trained model: ``arm``, ``setting`` (tap set of the encoder arms), ``multiple`` of the matched
weight, ``weight``, ``label`` (:func:`aeutils.sr.search.point_label`). An arm's *curve* is its points at the
setting validation chose, ordered by distortion. :func:`matched` compares two curves at matched distortion:
both interpolated linearly in the distortion judge (PSNR, or HaarPSI) over the range both cover, the
perception judge (ST-LPIPS) averaged over that range, the reference's relative difference reported, with
paired bootstrap intervals over images (the same resampled images for both curves; the range follows each
resample). Blau & Michaeli (2018): one point per arm mixes how much better it looks with what it costs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from aeutils.metrics.judges import LABELS, LOWER_IS_BETTER

__all__ = ["curve_points", "matched", "headline", "headline_lines", "chosen_differences", "pd_figure"]

#: the headline's distortion axes and perception judges
DISTORTIONS = ("psnr", "haarpsi")
PERCEPTIONS = ("stlpips", "nuclei_f1")


def curve_points(points: Any, per_image: dict[str, dict[str, np.ndarray]]) -> Any:
    """``points`` (DataFrame: arm, setting, multiple, weight, label, ...) with each point's mean test judges
    added (one column per judge in ``per_image[label]``)."""
    out = points.copy()
    judges = list(next(iter(per_image.values())))
    for j in judges:
        out[j] = [float(np.mean(per_image[lab][j])) for lab in out["label"]]
    return out


def _curve(xs: np.ndarray, ys: np.ndarray, grid: np.ndarray) -> np.ndarray:
    order = np.argsort(xs)
    return np.interp(grid, xs[order], ys[order])


def _matched_once(xa: np.ndarray, ya: np.ndarray, xb: np.ndarray, yb: np.ndarray, n_grid: int = 64) -> tuple[float, float, float]:
    """(relative difference of a's mean y to b's over the shared x range, range low, range high); NaN without overlap."""
    lo, hi = max(xa.min(), xb.min()), min(xa.max(), xb.max())
    if not hi > lo:
        return float("nan"), float(lo), float(hi)
    grid = np.linspace(lo, hi, n_grid)
    a, b = _curve(xa, ya, grid).mean(), _curve(xb, yb, grid).mean()
    return float(a / b - 1.0), float(lo), float(hi)


def matched(per_image: dict[str, dict[str, np.ndarray]], a: Sequence[str], b: Sequence[str], *, x: str = "psnr",
            y: str = "stlpips", n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Curve ``a`` (labels of its points) against curve ``b`` at matched ``x``: {"diff" (a's mean ``y`` over the
    shared ``x`` range relative to b's, e.g. -0.05: 5 % lower), "lo", "hi" (95 % paired bootstrap over images),
    "x_lo", "x_hi" (the shared range on all images), "overlap" (fraction of resamples with a shared range)}."""
    n_img = len(per_image[a[0]][x])
    stack = lambda labs, k: np.stack([per_image[lab][k] for lab in labs])  # noqa: E731  points x images
    xa, ya, xb, yb = stack(a, x), stack(a, y), stack(b, x), stack(b, y)
    diff, x_lo, x_hi = _matched_once(xa.mean(1), ya.mean(1), xb.mean(1), yb.mean(1))
    idx = np.random.default_rng(seed).integers(0, n_img, (n_boot, n_img))
    boots = np.array([_matched_once(xa[:, i].mean(1), ya[:, i].mean(1), xb[:, i].mean(1), yb[:, i].mean(1))[0] for i in idx])
    ok = boots[np.isfinite(boots)]
    lo, hi = (np.percentile(ok, [2.5, 97.5]) if len(ok) else (np.nan, np.nan))
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "x_lo": x_lo, "x_hi": x_hi, "overlap": len(ok) / n_boot}


def headline(points: Any, per_image: dict[str, dict[str, np.ndarray]], settings: dict[str, str], *,
             reference: str = "encoding", n_boot: int = 1000, seed: int = 0) -> Any:
    """DataFrame, one row per (other arm, distortion judge, perception judge): ``reference``'s curve (at its
    validation-chosen setting) against the other arm's at matched distortion (:func:`matched`). ``mse`` is one
    point, not a curve: it is compared at the chosen points (:func:`chosen_differences`)."""
    import pandas as pd

    def labels(arm: str) -> list[str]:
        p = points[(points["arm"] == arm) & (points["setting"] == settings[arm])]
        return list(p["label"])

    rows = []
    if reference not in settings:
        return pd.DataFrame(rows)
    ref = labels(reference)
    for other in [a for a in settings if a not in ("mse", reference)]:
        for x in DISTORTIONS:
            for y in PERCEPTIONS:
                r = matched(per_image, ref, labels(other), x=x, y=y, n_boot=n_boot, seed=seed)
                rows.append({"vs": other, "distortion": x, "judge": y, **r})
    return pd.DataFrame(rows)


def chosen_differences(per_image: dict[str, dict[str, np.ndarray]], *, reference: str = "encoding",
                       judges: Sequence[str] = ("psnr", "haarpsi", "stlpips", "nuclei_f1"), n_boot: int = 2000,
                       seed: int = 0) -> Any:
    """DataFrame, one row per (other method, judge): the chosen ``reference`` model against the other's, paired
    bootstrap over images: ``diff`` (PSNR: dB; other judges: relative, e.g. -0.05 = 5 % lower), ``lo``, ``hi``."""
    import pandas as pd

    if reference not in per_image:
        return pd.DataFrame()
    n_img = len(per_image[reference][judges[0]])
    idx = np.random.default_rng(seed).integers(0, n_img, (n_boot, n_img))
    rows = []
    for other in [m for m in per_image if m != reference]:
        for j in judges:
            a, b = per_image[reference][j], per_image[other][j]
            stat = (lambda i: a[i].mean(-1) - b[i].mean(-1)) if j == "psnr" else (lambda i: a[i].mean(-1) / b[i].mean(-1) - 1)
            boots = stat(idx)
            rows.append({"vs": other, "judge": j, "diff": float(stat(np.arange(n_img))),
                         "lo": float(np.percentile(boots, 2.5)), "hi": float(np.percentile(boots, 97.5))})
    return pd.DataFrame(rows)


def _pct(r: Any) -> str:
    return f"{r['diff']:+.1%} [{r['lo']:+.1%}, {r['hi']:+.1%}]"


def headline_lines(head: Any, chosen: Any = None, reference: str = "encoding") -> list[str]:
    """Plain-language lines: the matched-distortion headline (ST-LPIPS and nuclei F1) and, from
    :func:`chosen_differences`, the chosen points against mse (with the fidelity cost)."""
    lines: list[str] = []
    for _, r in head.iterrows() if len(head) else []:
        unit = "dB PSNR" if r["distortion"] == "psnr" else "HaarPSI"
        better = "lower" if r["judge"] in LOWER_IS_BETTER else "higher"
        if not np.isfinite(r["diff"]):
            line = f"{reference} vs {r['vs']}: the curves share no {LABELS[r['distortion']]} range, not compared"
            if line not in lines:
                lines.append(line)
            continue
        rng = f"{r['x_lo']:.2f}-{r['x_hi']:.2f}" if r["distortion"] == "psnr" else f"{r['x_lo']:.4f}-{r['x_hi']:.4f}"
        lines.append(f"{reference} vs {r['vs']} at matched {LABELS[r['distortion']]} ({rng} {unit}): "
                     f"{LABELS[r['judge']]} {_pct(r)} ({better} is better)")
    if chosen is not None and len(chosen):
        c = chosen.set_index(["vs", "judge"])
        for other in dict.fromkeys(chosen["vs"]):
            if other == "bicubic":
                continue
            p = c.loc[(other, "psnr")]
            lines.append(f"chosen points, {reference} vs {other}: ST-LPIPS {_pct(c.loc[(other, 'stlpips')])}, nuclei F1 "
                         f"{_pct(c.loc[(other, 'nuclei_f1')])}, PSNR {p['diff']:+.2f} dB [{p['lo']:+.2f}, {p['hi']:+.2f}]")
    return lines


def pd_figure(curves: Any, settings: dict[str, str], path: Path | None = None, *,
              distortions: Sequence[str] = DISTORTIONS, y: str = "stlpips") -> Any:
    """Test perception-distortion plane, one panel per distortion judge (x, right is better) with ``y`` (down is
    better): one curve per arm at its validation-chosen setting through its weights, ``mse`` a star, each arm's
    validation-chosen point circled. ``curves``: :func:`curve_points`' DataFrame with a ``chosen`` column.
    Legible at notebook width (8.6 in at 110 dpi). Saved to ``path`` if given; returns the figure."""
    import matplotlib.pyplot as plt

    from aeutils.sr.report import saved

    fig, axes = plt.subplots(1, len(distortions), figsize=(4.3 * len(distortions), 3.9), squeeze=False)
    mse = curves[curves["arm"] == "mse"]
    for ax, x in zip(axes[0], distortions):
        if len(mse):
            ax.plot(mse[x], mse[y], "k*", ms=13, label="mse", zorder=3)
        for arm, setting in settings.items():
            if arm == "mse":
                continue
            g = curves[(curves["arm"] == arm) & (curves["setting"] == setting)].sort_values("multiple")
            line, = ax.plot(g[x], g[y], "o-", ms=4, lw=1.6, label=arm)
            c = g[g["chosen"]]
            ax.plot(c[x], c[y], "o", ms=11, mfc="none", mec=line.get_color(), mew=2)
        arrow = "\u2193 lower" if y in LOWER_IS_BETTER else "\u2191 higher"
        ax.set_xlabel(f"test {LABELS[x]} (higher is better \u2192)", fontsize=10)
        ax.set_ylabel(f"test {LABELS[y]} ({arrow} is better)", fontsize=10)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=9, loc="best")
    fig.suptitle("perception vs distortion on the test images: best is bottom right; circles = validation's choice",
                 fontsize=10)
    fig.tight_layout()
    return saved(fig, path)
