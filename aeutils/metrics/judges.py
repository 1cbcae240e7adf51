"""Judges of super-resolved images, per image, none of them a training loss: PSNR (dB), SSIM, SSIM of the
haematoxylin channel (``skimage.color.rgb2hed``: nuclear detail), HaarPSI (``piq``) (all higher better),
ST-LPIPS (``stlpips-pytorch``, a shift-tolerant VGG16 calibrated on human similarity judgements of natural
images; lower better) and the nuclei judges of :mod:`aeutils.metrics.nuclei` (object F1, higher better;
relative count and mean-area errors, lower better); and paired bootstrap intervals over images (:func:`bootstrap`).
"""
from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import torch

__all__ = ["JUDGES", "LOWER_IS_BETTER", "LABELS", "MIN_SIDE", "Judges", "bootstrap"]

from aeutils.metrics.nuclei import NUCLEI_JUDGES, nuclei_scores

JUDGES = ("psnr", "ssim", "ssim_h", "haarpsi", "stlpips", *NUCLEI_JUDGES)
LOWER_IS_BETTER = {"stlpips", "nuclei_count", "nuclei_area"}
#: the smallest image side (px) every judge accepts: ST-LPIPS's VGG16 fails below 20 px
MIN_SIDE = 20
#: short column names for tables
LABELS = {"psnr": "PSNR dB", "ssim": "SSIM", "ssim_h": "SSIM H", "haarpsi": "HaarPSI", "stlpips": "ST-LPIPS",
          "nuclei_f1": "nuclei F1", "nuclei_count": "count err", "nuclei_area": "area err"}

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
    """The judges (:data:`JUDGES`), per image: ``__call__(sr, hr)`` (Nx3xHxW in [0, 1]) -> {judge: float64
    array of N}."""

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
        out["stlpips"] = torch.cat([self.stlpips(a, b, normalize=True).flatten()
                                    for a, b in zip(sr.split(8), hr.split(8))]).double().numpy()
        out.update(nuclei_scores(sr, hr))
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
