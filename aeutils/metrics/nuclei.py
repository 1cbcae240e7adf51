"""A nuclei judge of super-resolved H&E: what a pathologist reads, and what no SR arm trains on.

Nuclei are segmented from the haematoxylin channel (``skimage.color.rgb2hed``) of the HR image and of the SR
image alike (:func:`segment_nuclei`): Gaussian smoothing (:data:`SIGMA` px), one threshold (Otsu's on the HR
image's smoothed haematoxylin, applied to both: the SR image is read with the ruler of its ground truth),
holes filled, objects under :data:`MIN_AREA` px dropped, touching nuclei split by a watershed of the distance
transform (markers at least :data:`MIN_DISTANCE` px apart). The two label images are then matched object by
object (:func:`match_nuclei`): a pair matches at IoU >= :data:`IOU` (above 0.5 a match is unique).

Per image (:func:`nuclei_scores`):

* ``nuclei_f1``: object F1 = 2 TP / (n_HR + n_SR) (1 when both have no nucleus; higher is better);
* ``nuclei_count``: |n_SR - n_HR| / max(n_HR, 1), the relative count error (lower is better);
* ``nuclei_area``: |mean area SR - mean area HR| / mean area HR, the relative error of the mean nuclear area
  (0 when both have none, 1 when only one has; lower is better).

The parameters were fixed on the bundled slides' VALIDATION regions only (``python bench/nuclei_judge.py``
prints the grid it chose from and the sanity checks: HR vs itself perfect, x2 bicubic > x4 bicubic > x4
bilinear, a 1 px shift costs little). Images are level-0 RGB at ~0.5 um/px (a nucleus is ~10-20 px across).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["NUCLEI_JUDGES", "NucleiParams", "PARAMS", "SIGMA", "MIN_AREA", "MIN_DISTANCE", "IOU",
           "haematoxylin", "hr_threshold", "segment_nuclei", "match_nuclei", "nuclei_scores", "sanity_pairs",
           "nuclei_figure"]

#: the judges this module adds, and whether lower is better for them
NUCLEI_JUDGES = ("nuclei_f1", "nuclei_count", "nuclei_area")
#: Gaussian smoothing of the haematoxylin channel, px (chosen on validation: bench/nuclei_judge.py)
SIGMA = 1.5
#: smallest nucleus kept, px (~4 um^2 at 0.5 um/px: debris and noise below)
MIN_AREA = 20
#: smallest distance between two watershed markers (nucleus centres), px
MIN_DISTANCE = 5
#: IoU at which an SR nucleus matches an HR one
IOU = 0.5


@dataclass(frozen=True)
class NucleiParams:
    """The segmentation's parameters: ``sigma`` (px), ``min_area`` (px), ``min_distance`` (px, 0: no
    watershed split), ``iou`` (match threshold)."""

    sigma: float = SIGMA
    min_area: int = MIN_AREA
    min_distance: int = MIN_DISTANCE
    iou: float = IOU


PARAMS = NucleiParams()


def _rgb(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """3xHxW tensor or HxWx3 array in [0, 1] -> HxWx3 float64 array."""
    if isinstance(x, torch.Tensor):
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"expected a 3xHxW RGB image, got shape {tuple(x.shape)}")
        x = x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {x.shape}")
    return x


def haematoxylin(rgb: torch.Tensor | np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    """The smoothed haematoxylin optical density of one RGB image (3xHxW tensor or HxWx3 array in [0, 1]):
    HxW float64, higher where there is more haematoxylin (nuclei)."""
    from scipy.ndimage import gaussian_filter
    from skimage.color import rgb2hed

    h = rgb2hed(_rgb(rgb))[..., 0]
    return gaussian_filter(h, sigma) if sigma > 0 else h


def hr_threshold(hr: torch.Tensor | np.ndarray, params: NucleiParams = PARAMS) -> float:
    """Otsu's threshold of ``hr``'s smoothed haematoxylin (what :func:`nuclei_scores` applies to HR and SR)."""
    from skimage.filters import threshold_otsu

    h = haematoxylin(hr, params.sigma)
    return float(threshold_otsu(h)) if float(h.max() - h.min()) > 0 else float(h.max()) + 1.0


def segment_nuclei(rgb: torch.Tensor | np.ndarray, threshold: float, params: NucleiParams = PARAMS) -> np.ndarray:
    """Label image (HxW int32, 0 background, 1..n nuclei) of one RGB image: smoothed haematoxylin above
    ``threshold``, holes filled, objects under ``params.min_area`` px dropped, touching nuclei split by a
    watershed of the distance transform (markers ``params.min_distance`` px apart or more)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.measure import label
    from skimage.segmentation import watershed

    mask = ndi.binary_fill_holes(haematoxylin(rgb, params.sigma) > threshold)
    mask = _drop_small(label(mask), params.min_area) > 0
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    if params.min_distance <= 0:
        return label(mask).astype(np.int32)
    dist = ndi.distance_transform_edt(mask)
    blobs = label(mask)
    peaks = peak_local_max(dist, min_distance=params.min_distance, labels=blobs, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # blobs without a peak (thin ones) keep one marker each
    missing = np.setdiff1d(np.unique(blobs[mask]), np.unique(blobs[tuple(peaks.T)]) if len(peaks) else [])
    for i, b in enumerate(missing, start=len(peaks) + 1):
        ys, xs = np.nonzero(blobs == b)
        markers[ys[0], xs[0]] = i
    return _drop_small(watershed(-dist, markers, mask=mask), params.min_area)


def _drop_small(lab: np.ndarray, min_area: int) -> np.ndarray:
    """``lab`` (HxW labels) without objects under ``min_area`` px, renumbered 1..n (int32)."""
    areas = np.bincount(lab.ravel())
    keep = areas >= min_area
    keep[0] = False
    lut = np.zeros(len(areas), np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[lab]


def match_nuclei(ref: np.ndarray, test: np.ndarray, iou: float = IOU) -> tuple[int, np.ndarray, np.ndarray]:
    """Object matching of two label images (HxW, 0 background, 1..n): (true positives, areas of ``ref``'s
    objects, areas of ``test``'s objects), a pair counting when its IoU >= ``iou``."""
    if ref.shape != test.shape:
        raise ValueError(f"label images differ in shape: {ref.shape} vs {test.shape}")
    n_r, n_t = int(ref.max()), int(test.max())
    a_r = np.bincount(ref.ravel(), minlength=n_r + 1)[1:]
    a_t = np.bincount(test.ravel(), minlength=n_t + 1)[1:]
    if n_r == 0 or n_t == 0:
        return 0, a_r, a_t
    both = (ref > 0) & (test > 0)
    inter = np.bincount(ref[both].astype(np.int64) * (n_t + 1) + test[both], minlength=(n_r + 1) * (n_t + 1))
    inter = inter.reshape(n_r + 1, n_t + 1)[1:, 1:].astype(np.float64)
    union = a_r[:, None] + a_t[None, :] - inter
    ious = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    ok = ious >= iou
    if iou <= 0.5:  # above 0.5 a match is unique; below, greedy one-to-one by IoU
        tp, used_r, used_t = 0, set(), set()
        for r, t in sorted(zip(*np.nonzero(ok)), key=lambda p: -ious[p]):
            if r not in used_r and t not in used_t:
                used_r.add(r), used_t.add(t)
                tp += 1
        return tp, a_r, a_t
    return int(ok.sum()), a_r, a_t


def nuclei_scores(sr: torch.Tensor, hr: torch.Tensor, params: NucleiParams = PARAMS) -> dict[str, np.ndarray]:
    """The three nuclei judges per image of ``sr`` against ``hr`` (Nx3xHxW RGB in [0, 1]):
    {"nuclei_f1", "nuclei_count", "nuclei_area": float64 arrays of N} (see the module docstring)."""
    if sr.shape != hr.shape or sr.ndim != 4:
        raise ValueError(f"expected two Nx3xHxW batches of one shape, got {tuple(sr.shape)} and {tuple(hr.shape)}")
    f1, count, area = [], [], []
    for s, h in zip(sr, hr):
        t = hr_threshold(h, params)
        lab_h, lab_s = segment_nuclei(h, t, params), segment_nuclei(s, t, params)
        tp, a_h, a_s = match_nuclei(lab_h, lab_s, params.iou)
        n_h, n_s = len(a_h), len(a_s)
        f1.append(1.0 if n_h + n_s == 0 else 2.0 * tp / (n_h + n_s))
        count.append(abs(n_s - n_h) / max(n_h, 1))
        if n_h == 0 or n_s == 0:
            area.append(0.0 if n_h == n_s else 1.0)
        else:
            area.append(abs(a_s.mean() - a_h.mean()) / a_h.mean())
    return {"nuclei_f1": np.asarray(f1), "nuclei_count": np.asarray(count), "nuclei_area": np.asarray(area)}


def sanity_pairs(hr: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The judge's sanity checks as (degraded, reference) pairs of ``hr`` (Nx3xHxW in [0, 1], sides multiples
    of 4): ``self`` (hr, hr), ``shift1`` (hr moved 1 px right against hr, both cropped by 1 px),
    ``x2_bicubic``, ``x4_bicubic`` (antialiased bicubic down, bicubic up) and ``x4_bilinear`` (bilinear up).
    A sensible judge ranks self > shift1 > x2_bicubic > x4_bicubic > x4_bilinear (shift1 close to self)."""
    import torch.nn.functional as F

    from aeutils.sr.degrade import bicubic_down, bicubic_up

    h, w = hr.shape[-2:]
    down4 = bicubic_down(hr, (h // 4, w // 4))
    return {
        "self": (hr, hr),
        "shift1": (hr[..., :, :-1], hr[..., :, 1:]),
        "x2_bicubic": (bicubic_up(bicubic_down(hr, (h // 2, w // 2)), size=(h, w)), hr),
        "x4_bicubic": (bicubic_up(down4, size=(h, w)), hr),
        "x4_bilinear": (F.interpolate(down4, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1), hr),
    }


def nuclei_figure(images: dict[str, list[torch.Tensor]], index: int = 0, side: int = 96, params: NucleiParams = PARAMS) -> Any:
    """What the nuclei judge sees on one test image: one panel per method of ``images`` (method -> list of
    3xHxW images, ``"hr"`` among them), the same centre crop (``side`` px) with the nuclei segmented with HR's
    threshold outlined, and each method's object F1 against HR in the title. Returns the figure."""
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    hr = images["hr"][index]
    t = hr_threshold(hr, params)
    lab_h = segment_nuclei(hr, t, params)
    h, w = hr.shape[-2:]
    s = min(side, h, w)
    top, left = (h - s) // 2, (w - s) // 2
    fig, axes = plt.subplots(1, len(images), figsize=(1.3 * len(images), 1.9), squeeze=False)
    for ax, (method, ims) in zip(axes[0], images.items()):
        lab = segment_nuclei(ims[index], t, params)
        tp, a_h, a_s = match_nuclei(lab_h, lab, params.iou)
        rgb = ims[index].clamp(0, 1).permute(1, 2, 0).numpy().copy()
        rgb[find_boundaries(lab, mode="inner")] = (0.0, 0.9, 0.2)
        ax.imshow(rgb[top : top + s, left : left + s])
        ax.set_xticks([]), ax.set_yticks([])
        f1 = 1.0 if len(a_h) + len(a_s) == 0 else 2 * tp / (len(a_h) + len(a_s))
        ax.set_title(f"{method}\n{len(a_s)} nuclei, F1 {f1:.2f}", fontsize=9)
    fig.suptitle("nuclei found (green) with HR's threshold; F1: objects matched to HR's at IoU >= 0.5", fontsize=9)
    fig.tight_layout()
    return fig
