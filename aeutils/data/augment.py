"""Training augmentations on patch images: HED stain jitter (:func:`hed_jitter`); the geometric ones
(random crop position, flips, 90-degree rotations) are applied by :class:`aeutils.data.PatchDataset`."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["hed_jitter"]


def hed_jitter(rgb: np.ndarray, alpha: Sequence[float], beta: Sequence[float]) -> np.ndarray:
    """Stain jitter in haematoxylin-eosin-DAB space: each stain channel c becomes
    ``s_c * (1 + alpha[c]) + beta[c]``. ``rgb``: HxWx3 uint8 or float in [0, 1]; returns float32
    HxWx3 in [0, 1].

    Uses scikit-image's colour-deconvolution matrices (``skimage.color.hed_from_rgb`` /
    ``rgb_from_hed``, the maths of ``rgb2hed``/``hed2rgb``) but without ``rgb2hed``'s clipping of
    negative stain values, so zero jitter is an exact round trip even for out-of-gamut pixels.
    """
    from skimage.color import hed_from_rgb, rgb_from_hed

    x = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)
    log_adjust = np.log(1e-6)
    stains = (np.log(np.maximum(x, 1e-6)) / log_adjust) @ hed_from_rgb
    stains = stains * (1.0 + np.asarray(alpha, dtype=np.float64)) + np.asarray(beta, dtype=np.float64)
    out = np.exp((stains * log_adjust) @ rgb_from_hed)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
