"""Evidence for a perceptual loss: how it responds to graded degradations an SR model must fix (blur,
bicubic down-up, noise) versus nuisances it should not be punished for (a 1-pixel shift, a few percent
brightness, a slight stain shift), for the trained encoder (:class:`aeutils.losses.EncodingLoss`), the same
encoder with random weights (the control) and pixel MSE. :func:`sensitivity_table` computes it;
``bench/loss_sensitivity.py`` and notebook 05 print it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from aeutils.losses import EncodingLoss
from aeutils.losses.controls import random_encoder
from aeutils.model import TAPS, Autoencoder, check_size
from aeutils.sr.degrade import bicubic_down, bicubic_up


#: degradations an SR model must fix: name -> severity grades (blur: Gaussian sigma in pixels;
#: down-up: bicubic antialiased downscale factor then bicubic back up; noise: Gaussian std on [0, 1])
DETAIL_GRADES: dict[str, tuple[float, ...]] = {
    "blur": (0.5, 1.0, 1.5, 2.0),
    "down-up": (2.0, 3.0, 4.0),
    "noise": (0.01, 0.02, 0.04, 0.08),
}
#: nuisances it should not be punished for (shift: pixels, right; brightness: relative change, both
#: signs; stain: relative haematoxylin up / eosin down in HED space, via the training augmentation
#: :func:`aeutils.data.hed_jitter`). The grades mean what they meant with the earlier rgb2hed/hed2rgb
#: version; that one clipped negative stain densities to 0 and so left some pixels unchanged: on held-out
#: sample patches hed_jitter's pixel change is ~15 % larger (RMS), i.e. the same order of nuisance
NUISANCE_GRADES: dict[str, tuple[float, ...]] = {
    "shift": (1.0, 2.0),
    "brightness": (-0.04, -0.02, 0.02, 0.04),
    "stain": (0.05, 0.1),
}


def degrade(patches: torch.Tensor, name: str, grade: float, margin: int, seed: int = 0) -> torch.Tensor:
    """Apply one degradation/nuisance to Nx3x(S+2m)x(S+2m) patches in [0, 1] and return the central
    Nx3xSxS crop (``m = margin`` pixels; the margin keeps borders out: a shift brings real pixels in)."""
    import torchvision.transforms.functional as TF

    n, _, h, w = patches.shape
    x = patches
    if name == "blur":
        radius = max(1, math.ceil(3 * grade))
        x = TF.gaussian_blur(x, [2 * radius + 1] * 2, [float(grade)] * 2)
    elif name == "down-up":
        small = (max(1, round(h / grade)), max(1, round(w / grade)))  # grade need not divide h
        x = bicubic_up(bicubic_down(x, small, clamp=False), size=(h, w))
    elif name == "noise":
        g = torch.Generator().manual_seed(seed)
        x = (x + grade * torch.randn(x.shape, generator=g).to(x)).clamp(0, 1)
    elif name == "shift":
        s = int(grade)
        if s > margin:
            raise ValueError(f"shift {s} px needs margin >= {s}")
        return x[:, :, margin : h - margin, margin - s : w - margin - s]
    elif name == "brightness":
        x = (x * (1 + grade)).clamp(0, 1)
    elif name == "stain":
        # the training augmentation's HED jitter (aeutils.data.hed_jitter, skimage's deconvolution
        # matrices without rgb2hed's clipping of negative stain values, so zero jitter is exact):
        # haematoxylin x (1 + grade), eosin x (1 - grade), DAB unchanged
        from aeutils.data import hed_jitter

        arr = x.permute(0, 2, 3, 1).cpu().numpy()
        out = np.stack([hed_jitter(a, alpha=(grade, -grade, 0.0), beta=(0.0, 0.0, 0.0)) for a in arr])
        x = torch.from_numpy(out).permute(0, 3, 1, 2).to(patches)
    else:
        raise ValueError(f"unknown degradation {name!r}")
    return x[:, :, margin : h - margin, margin : w - margin]


def _auc(detail: np.ndarray, nuisance: np.ndarray) -> float:
    """P(detail response > nuisance response) over images and all column pairs (ties count half);
    ``detail`` N x D, ``nuisance`` N x U."""
    d, u = detail[:, :, None], nuisance[:, None, :]
    return float((d > u).mean() + 0.5 * (d == u).mean())


@dataclass
class SensitivityResult:
    """Responses of several losses to graded degradations and nuisances.

    ``per_image[loss][(condition, grade)]`` is a length-N numpy array (the loss between the degraded
    and the clean crop of each patch); ``kinds[condition]`` is ``"detail"`` or ``"nuisance"``.
    """

    per_image: dict[str, dict[tuple[str, float], np.ndarray]]
    kinds: dict[str, str]
    n_patches: int
    size: int
    #: loss -> 2 for squared losses (MSE, criterion "l2"), 1 otherwise; ratios use response**(1/power)
    powers: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def mean(self, loss: str, condition: str, grade: float) -> float:
        """Mean response of ``loss`` to one condition at one grade."""
        return float(self.per_image[loss][(condition, grade)].mean())

    def summary(self) -> dict[str, dict[str, float]]:
        """Per loss: ``spearman:<degradation>`` (mean over patches of Spearman's rho between severity
        and response; 1 = always monotone), ``ratio`` (geometric mean of the mean detail responses /
        geometric mean of the mean nuisance responses: scale-free, every condition counts alike),
        ``worst`` (mildest detail response / strongest nuisance response; > 1 means even the
        mildest degradation costs more than any nuisance) and ``auc`` (probability, over images and
        all detail x nuisance condition pairs, that the detail response is the larger; ``auc:<degradation>``
        the same for one degradation's grades against all nuisances). Ratios are
        taken of the loss's root for squared losses (MSE -> RMSE), so squaring does not square the
        ratio; Spearman and AUC are rank-based and need no such care."""
        from scipy.stats import spearmanr

        out: dict[str, dict[str, float]] = {}
        for loss, table in self.per_image.items():
            row: dict[str, float] = {}
            for cond, kind in self.kinds.items():
                if kind != "detail":
                    continue
                grades = sorted(g for c, g in table if c == cond)
                if len(grades) < 2:
                    continue
                resp = np.stack([table[(cond, g)] for g in grades], 1)  # N x grades
                rhos = [spearmanr(grades, r).statistic for r in resp]
                row[f"spearman:{cond}"] = float(np.nanmean(rhos)) if not np.all(np.isnan(rhos)) else float("nan")
            det = {k: v for k, v in table.items() if self.kinds[k[0]] == "detail"}
            nui = {k: v for k, v in table.items() if self.kinds[k[0]] == "nuisance"}
            dm = np.array([v.mean() for v in det.values()])
            nm = np.array([v.mean() for v in nui.values()])
            tiny = 1e-30
            root = 1.0 / self.powers.get(loss, 1)
            row["ratio"] = float(np.exp(np.log(dm + tiny).mean() - np.log(nm + tiny).mean()) ** root)
            row["worst"] = float((dm.min() / max(nm.max(), tiny)) ** root)
            d = np.stack(list(det.values()), 1)  # N x D
            u = np.stack(list(nui.values()), 1)  # N x U
            row["auc"] = _auc(d, u)
            for cond, kind in self.kinds.items():
                if kind == "detail":
                    row[f"auc:{cond}"] = _auc(np.stack([v for k, v in det.items() if k[0] == cond], 1), u)
            out[loss] = row
        return out

    def relative_response(self, loss: str, *, root: bool = True) -> dict[tuple[str, float], float]:
        """Mean response of ``loss`` per ``(condition, grade)`` divided by the geometric mean of its mean
        nuisance responses (1 = a typical nuisance), so different losses read on one scale. ``root``:
        take the loss's root first for squared losses (MSE -> RMSE, see ``powers``); ``False`` gives the
        squared losses as they are (what :meth:`to_text` prints)."""
        table = self.per_image[loss]
        nm = np.array([v.mean() for k, v in table.items() if self.kinds[k[0]] == "nuisance"])
        ref = float(np.exp(np.log(nm + 1e-30).mean()))
        p = self.powers.get(loss, 1) if root else 1
        return {k: float((v.mean() / ref) ** (1.0 / p)) for k, v in table.items()}

    def verdict(self, encoder: str = "trained", controls: tuple[str, ...] = ("random", "pixel MSE"),
                best_by: str = "auc") -> str:
        """Plain-text verdict computed from :meth:`summary`: for ``ratio`` and ``auc``, is ``encoder``
        (the default EncodingLoss on the trained model) better than every one of ``controls``; the same
        per detail degradation (``auc:<degradation>``); and the best variant of ``encoder`` and of the
        first control by ``best_by``. Controls missing from the result are skipped."""
        summ = self.summary()
        ctrl = [c for c in controls if c in summ]
        if encoder not in summ:
            raise ValueError(f"no loss {encoder!r} in this result; losses are {list(summ)}")
        lines = []
        for key in ("ratio", "auc"):
            t = summ[encoder][key]
            better = all(t > summ[c][key] for c in ctrl)
            vs = "".join(f" vs {c} {summ[c][key]:.3f}" for c in ctrl)
            lines.append(f"{key}: {encoder} {t:.3f}{vs} -> {encoder} encoder "
                         f"{'better than' if better else 'NOT better than'} {'both controls' if len(ctrl) == 2 else 'the controls'}")
        per = [k for k in summ[encoder] if k.startswith("auc:")]
        if per and ctrl:
            wins = [k[4:] for k in per if all(summ[encoder][k] > summ[c][k] for c in ctrl)]
            rest = [k[4:] for k in per if k[4:] not in wins]
            lines.append(f"per degradation (auc): {encoder} beats {' and '.join(ctrl)} on "
                         f"{', '.join(wins) or 'none'}; not on {', '.join(rest) or 'none'}")
        for name in (encoder, *ctrl[:1]):
            variants = [k for k in summ if k == name or k.startswith(f"{name}:")]
            best = max(variants, key=lambda k: summ[k][best_by])
            lines.append(f"best {name} variant by {best_by}: {best} "
                         f"(auc {summ[best]['auc']:.3f}, ratio {summ[best]['ratio']:.3f})")
        return "\n".join(lines)

    def to_text(self, response_losses: list[str] | None = None) -> str:
        """Two plain-text tables: the summary per loss, then (for ``response_losses``, default the
        first three) each loss's mean response per condition divided by its geometric-mean nuisance
        response (so the losses read on one scale; squared losses as they are)."""
        summ = self.summary()
        losses = list(self.per_image)
        wid = max(12, *(len(s) for s in losses)) + 1
        cols = [k for k in next(iter(summ.values()))]
        lines = [f"{self.n_patches} held-out patches, {self.size} px; "
                 "ratio/worst/auc: higher = separates lost detail from nuisances better"]
        label = {c: c.replace("spearman:", "rho ").replace("auc:", "auc ") for c in cols}
        cw = max(9, *(len(v) + 1 for v in label.values()))
        lines.append("loss".ljust(wid) + "".join(label[c].rjust(cw) for c in cols))
        for loss in losses:
            lines.append(loss.ljust(wid) + "".join(f"{summ[loss][c]:{cw}.3f}" for c in cols))
        lines.append("")
        conds = list(next(iter(self.per_image.values())))
        lines.append("response / geometric-mean nuisance response (per loss)")
        head = [f"{c} {g:g}" for c, g in conds]
        losses = response_losses or losses[:3]
        rel = {loss: self.relative_response(loss, root=False) for loss in losses}
        lines.append("condition".ljust(16) + "".join(s[:wid].rjust(wid) for s in losses))
        for (c, g), label in zip(conds, head):
            cells = [f"{rel[loss][(c, g)]:{wid}.3g}" for loss in losses]
            lines.append(f"{self.kinds[c][0]} {label}".ljust(16) + "".join(cells))
        for k, v in self.notes.items():
            lines.append(f"{k}: {v}")
        return "\n".join(lines)


def random_control(model: Autoencoder, seed: int = 0) -> Autoencoder:
    """Deprecated: :func:`aeutils.losses.controls.random_encoder` ``(model.config, seed=seed)``, the one
    random-weight control (this used to seed with ``seed + 12345``, so two benches had two random encoders)."""
    import warnings

    warnings.warn("aeutils.sensitivity.random_control is deprecated: use "
                  "aeutils.losses.controls.random_encoder(model.config, seed=seed)", DeprecationWarning, stacklevel=2)
    return random_encoder(model.config, seed=seed)


def default_variants() -> dict[str, dict[str, Any]]:
    """EncodingLoss settings compared by :func:`sensitivity_table`: the default ("", stage1 with
    instance normalisation), each tap alone without normalisation, and tap sets with per-channel
    ("norm") or per-image instance ("inorm") normalisation."""
    every = {k: 1.0 for k in TAPS}
    variants: dict[str, dict[str, Any]] = {"": {}}
    for tap in TAPS:
        variants[f":{tap}"] = {"tap_weights": {tap: 1.0}, "normalize": "none"}
    variants[":stage1+2"] = {"tap_weights": {"stage1": 1.0, "stage2": 1.0}, "normalize": "none"}
    variants[":all"] = {"tap_weights": every, "normalize": "none"}
    variants[":stage1+norm"] = {"tap_weights": {"stage1": 1.0}, "normalize": "channel"}
    variants[":all+norm"] = {"tap_weights": every, "normalize": "channel"}
    variants[":stage1+2+inorm"] = {"tap_weights": {"stage1": 1.0, "stage2": 1.0}, "normalize": "instance"}
    variants[":all+inorm"] = {"tap_weights": every, "normalize": "instance"}
    return variants


def sensitivity_table(
    patches: torch.Tensor,
    encoders: Mapping[str, Autoencoder],
    *,
    margin: int = 4,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    detail: Mapping[str, tuple[float, ...]] | None = None,
    nuisance: Mapping[str, tuple[float, ...]] | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> SensitivityResult:
    """Responses of pixel MSE and of :class:`EncodingLoss` on each encoder (``{"trained": model,
    "random": control}``) in each of ``variants`` (name suffix -> EncodingLoss kwargs; default
    :func:`default_variants`) to :data:`DETAIL_GRADES` and :data:`NUISANCE_GRADES`.

    ``patches``: Nx3x(S+2*margin)x(S+2*margin) RGB in [0, 1] (e.g. ``sample_patches(n, 181 + 8,
    split="val")``); losses are computed on the central SxS crops (S = 4k+1). Features of each
    degraded batch are computed once per encoder and shared by its variants.
    """
    detail = dict(DETAIL_GRADES if detail is None else detail)
    nuisance = dict(NUISANCE_GRADES if nuisance is None else nuisance)
    variants = dict(default_variants() if variants is None else variants)
    size = patches.shape[-1] - 2 * margin
    check_size(patches.shape[-2] - 2 * margin, size)
    kinds = {**{k: "detail" for k in detail}, **{k: "nuisance" for k in nuisance}}
    conds = [(c, float(g)) for c, gs in {**detail, **nuisance}.items() for g in gs]
    losses = {f"{enc}{suffix}": EncodingLoss(model=model, reduction="none", **kw)
              for enc, model in encoders.items() for suffix, kw in variants.items()}
    per_image: dict[str, dict[tuple[str, float], list[np.ndarray]]] = {
        name: {c: [] for c in conds} for name in ["pixel MSE", *losses]}
    clean_all = patches[:, :, margin : margin + size, margin : margin + size]
    with torch.no_grad():
        for start in range(0, len(patches), batch_size):
            batch = patches[start : start + batch_size].float()
            clean = clean_all[start : start + batch_size].float()
            first = next(iter(variants))
            clean_feats = {enc: losses[f"{enc}{first}"].features(clean) for enc in encoders}
            for ci, (c, g) in enumerate(conds):
                bad = degrade(batch, c, g, margin, seed=seed + 1000 * ci + start)
                per_image["pixel MSE"][(c, g)].append((bad - clean).square().flatten(1).mean(1).numpy())
                for enc in encoders:
                    feats = losses[f"{enc}{first}"].features(bad)
                    for suffix in variants:
                        loss = losses[f"{enc}{suffix}"]
                        per_image[f"{enc}{suffix}"][(c, g)].append(
                            (loss.compare(feats, clean_feats[enc]) * loss.weight).numpy())
    return SensitivityResult(
        per_image={k: {c: np.concatenate(v) for c, v in t.items()} for k, t in per_image.items()},
        kinds=kinds, n_patches=len(patches), size=size,
        powers={"pixel MSE": 2, **{k: 2 if v.criterion == "l2" else 1 for k, v in losses.items()}})
