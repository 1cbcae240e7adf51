"""Whole-slide statistics of an encoding map and its grey-level views (raw / stretch / equalize).

Minimum, maximum and a fine histogram are taken over the **whole slide's tissue** in two streamed
passes, so every tile of the map gets the same contrast; memory holds one core at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from aeutils.errors import AeutilsError

#: encoding views of the map (as in :mod:`aeutils.viz`, with whole-slide statistics)
VIEWS: tuple[str, ...] = ("raw", "stretch", "equalize")
#: histogram bins of :class:`MapStats` (percentiles), and the bins equalisation uses (as aeutils.viz)
STAT_BINS, EQ_BINS = 65536, 4096


def check_view(view: str, low: float, high: float) -> None:
    """:class:`AeutilsError` unless ``view`` is one of :data:`VIEWS` and 0 <= ``low`` < ``high`` <= 100 (%)."""
    if view not in VIEWS:
        raise AeutilsError(f"unknown view {view!r}: choose from {', '.join(VIEWS)}")
    if not 0.0 <= low < high <= 100.0:
        raise AeutilsError(f"percentiles need 0 <= low < high <= 100, got low={low}, high={high}")


@dataclass
class MapStats:
    """Value statistics of an encoding map over the tissue: count, min, max and a histogram of
    :data:`STAT_BINS` equal bins over [min, max] (``counts``)."""

    count: int
    minimum: float
    maximum: float
    counts: np.ndarray = field(repr=False)

    @classmethod
    def from_values(cls, chunks: Callable[[], Iterator[np.ndarray]]) -> "MapStats":
        """Two passes over ``chunks()`` (a callable returning an iterator of float arrays): min/max, then the histogram."""
        lo, hi, n = math.inf, -math.inf, 0
        for c in chunks():
            if c.size:
                lo, hi, n = min(lo, float(c.min())), max(hi, float(c.max())), n + c.size
        counts = np.zeros(STAT_BINS, np.int64)
        if n == 0:
            return cls(0, 0.0, 0.0, counts)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise AeutilsError("the encoding holds non-finite values")
        for c in chunks():
            if c.size:
                counts += np.histogram(c, bins=STAT_BINS, range=(lo, hi if hi > lo else lo + 1))[0]
        return cls(n, lo, hi, counts)

    def _edges(self, bins: int) -> np.ndarray:
        return np.linspace(self.minimum, self.maximum, bins + 1)

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0..100) of the tissue values, interpolated in the histogram."""
        if self.count == 0 or self.maximum <= self.minimum:
            return self.minimum
        cdf = np.concatenate([[0.0], np.cumsum(self.counts) / self.count])
        return float(np.interp(p / 100.0, cdf, self._edges(STAT_BINS)))

    def view(self, z: np.ndarray, view: str = "stretch", low: float = 2.0, high: float = 98.0) -> np.ndarray:
        """``z`` (any shape of floats) mapped to [0, 1] with the whole slide's statistics.

        ``raw``: (z - min) / (max - min). ``stretch``: the ``low``/``high`` percentiles to 0/1, clipped
        (``skimage.exposure.rescale_intensity``; min-max if they coincide). ``equalize``: the tissue's
        CDF over :data:`EQ_BINS` bins, interpolated at bin centres and scaled so the minimum is 0 and
        the maximum 1 (what :func:`aeutils.viz.encoding_view` does for one map).
        """
        from skimage import exposure

        check_view(view, low, high)
        z = np.asarray(z, dtype=np.float64)
        lo, hi = self.minimum, self.maximum
        if hi <= lo:
            return np.zeros_like(z)
        if view == "raw":
            return np.clip((z - lo) / (hi - lo), 0.0, 1.0)
        if view == "stretch":
            p_lo, p_hi = self.percentile(low), self.percentile(high)
            if p_hi <= p_lo:
                p_lo, p_hi = lo, hi
            return exposure.rescale_intensity(z, in_range=(p_lo, p_hi), out_range=(0.0, 1.0))
        counts = self.counts.reshape(EQ_BINS, -1).sum(1)
        cdf = np.cumsum(counts) / counts.sum()
        edges = self._edges(EQ_BINS)
        centres = (edges[:-1] + edges[1:]) / 2
        eq = np.interp(z, centres, cdf)
        return np.clip((eq - cdf[0]) / (1.0 - cdf[0]), 0.0, 1.0) if cdf[0] < 1 else np.zeros_like(z)


def to_uint8(v: np.ndarray) -> np.ndarray:
    """A [0, 1] view as uint8 grey levels (rounded)."""
    return np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8)
