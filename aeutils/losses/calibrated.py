"""An LPIPS-style calibration of :class:`~aeutils.losses.EncodingLoss`: one non-negative weight per channel of
each tap, fitted so that the loss ranks degradations by severity above nuisances (Zhang et al. 2018's linear
layers, fitted here to a ranking of known degradations instead of human judgements).

:func:`fit_channel_weights` fits them on HR patches of TRAINING regions only: for each patch, the
nuisances (a 1 px shift, a small stain jitter) should be closer to it than a mild degradation (x2 bicubic),
and that closer than a severe one (x4 bicubic): a logistic loss on the log-ratio of the distances, weights
``softplus(theta)`` scaled to mean 1 per tap (uniform weights give :class:`EncodingLoss` exactly), a small
penalty keeping them near uniform. :class:`CalibratedEncodingLoss` applies them.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from aeutils.losses.common import _instance_norm, _pointwise
from aeutils.losses.encoding import EncodingLoss

__all__ = ["CalibratedEncodingLoss", "fit_channel_weights", "ranking_pairs"]


class CalibratedEncodingLoss(EncodingLoss):
    """:class:`EncodingLoss` with one weight per channel of each tap (``channel_weights``: tap -> C weights,
    mean 1 for the mean over channels to stay on EncodingLoss's scale). Other arguments as EncodingLoss's."""

    def __init__(self, *args, channel_weights: Mapping[str, torch.Tensor], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cw = {k: torch.as_tensor(v, dtype=torch.float32).flatten() for k, v in channel_weights.items()}
        for k, v in self._cw.items():
            self.register_buffer(f"cw_{k}", v.view(1, -1, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", calibrated taps={sorted(self._cw)}"

    def _weigh_channels(self, tap: str, d: torch.Tensor) -> torch.Tensor:
        """``d`` (NxCxhxw) times the fitted weight of each channel of ``tap`` (taps without fitted weights: as
        :class:`EncodingLoss`)."""
        cw = getattr(self, f"cw_{tap}", None)
        return d if cw is None else d * cw.to(d.dtype)


def ranking_pairs(hr: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Variants of ``hr`` (Nx3xSxS in [0, 1], S a multiple of 4), each the size of ``hr`` less one column:
    nuisances ``shift1`` (1 px right), ``stain`` (HED jitter of +-5 %), degradations ``x2`` and ``x4``
    (bicubic down-up), and ``ref`` (the reference, cropped alike)."""
    from aeutils.data import hed_jitter
    from aeutils.sr.degrade import bicubic_down, bicubic_up

    h, w = hr.shape[-2:]
    rng = np.random.default_rng(seed)
    stain = torch.stack([torch.from_numpy(hed_jitter(x.permute(1, 2, 0).numpy(), rng.uniform(-0.05, 0.05, 3),
                                                     rng.uniform(-0.02, 0.02, 3))).permute(2, 0, 1).float() for x in hr])
    x2 = bicubic_up(bicubic_down(hr, (h // 2, w // 2)), size=(h, w))
    x4 = bicubic_up(bicubic_down(hr, (h // 4, w // 4)), size=(h, w))
    crop = lambda t: t[..., :, 1:]  # noqa: E731
    return {"ref": crop(hr), "shift1": hr[..., :, :-1], "stain": crop(stain), "x2": crop(x2), "x4": crop(x4)}


@torch.no_grad()
def _channel_distances(loss: EncodingLoss, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """tap -> NxC mean |instance-normalised feature difference| per channel."""
    fa, fb = loss.features(a), loss.features(b)
    out = {}
    for name, w in loss.tap_weights.items():
        if w:
            x, y = _instance_norm(fa[name].float()), _instance_norm(fb[name].float())
            out[name] = _pointwise(loss.criterion, x, y).mean(dim=(2, 3))
    return out


def fit_channel_weights(loss: EncodingLoss, hr: torch.Tensor, *, steps: int = 400, margin: float = 0.1,
                        reg: float = 0.01, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Channel weights for ``loss``'s taps from training patches ``hr`` (Nx3xSxS): returns (tap -> C weights,
    mean 1) and {"before", "after"}: the fraction of ranking constraints met with uniform and fitted weights."""
    v = ranking_pairs(hr, seed)
    D = {k: _channel_distances(loss, v["ref"], v[k]) for k in ("shift1", "stain", "x2", "x4")}
    order = [("shift1", "x2"), ("stain", "x2"), ("x2", "x4"), ("shift1", "x4"), ("stain", "x4")]  # (closer, farther)
    taps = list(D["x2"])
    torch.manual_seed(seed)
    theta = {t: torch.zeros(D["x2"][t].shape[1], requires_grad=True) for t in taps}
    opt = torch.optim.Adam(list(theta.values()), lr=0.05)
    soft0 = float(torch.nn.functional.softplus(torch.zeros(())))

    def weights() -> dict[str, torch.Tensor]:
        return {t: (w := torch.nn.functional.softplus(theta[t])) / w.mean() for t in taps}

    def dist(kind: str, w: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(loss.tap_weights[t] * (D[kind][t] * w[t]).mean(1) for t in taps)

    def met(w: dict[str, torch.Tensor]) -> float:
        return float(torch.stack([(dist(a, w) < dist(b, w)).float().mean() for a, b in order]).mean())

    before = met({t: torch.ones_like(theta[t]) for t in taps})
    for _ in range(steps):
        w = weights()
        rank = sum(torch.nn.functional.softplus(torch.log(dist(a, w)) - torch.log(dist(b, w)) + margin).mean()
                   for a, b in order)
        pen = reg * sum(((theta[t] - soft0) ** 2).mean() for t in taps)
        opt.zero_grad()
        (rank + pen).backward()
        opt.step()
    with torch.no_grad():
        w = weights()
        return {t: w[t].detach().clone() for t in taps}, {"before": before, "after": met(w)}
