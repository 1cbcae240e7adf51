"""Where the input pixels come from: an in-memory image or a slide at a scale, read by region.

A source has ``width``, ``height`` (input px), ``mpp`` (um/px or None), ``name`` and
``read(x0, y0, w, h) -> h x w x 3 uint8``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np


class ArraySource:
    """Input pixels from an in-memory H x W x 3 uint8 image (tests, notebooks)."""

    def __init__(self, rgb: np.ndarray, mpp: float | None = None, name: str = "image") -> None:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 image, got {rgb.shape} {rgb.dtype}")
        self.rgb, self.mpp, self.name = rgb, mpp, name
        self.width, self.height = int(rgb.shape[1]), int(rgb.shape[0])

    def read(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """h x w x 3 uint8 input pixels from (x0, y0)."""
        return self.rgb[y0:y0 + h, x0:x0 + w]


class SlideSource:
    """Input pixels of an open :class:`~aeutils.slides.Slide` at a :class:`~aeutils.scale.ScaleChoice`
    (a level as is, or resampled from the next finer one, as :func:`aeutils.scale.read_scaled`).

    The level's pixels are decoded straight from the TIFF tiles where :func:`aeutils.tiffread.tile_reader`
    verified that gives OpenSlide's pixels for this file and level (tiled .tif / .svs; ~6 vs 20-45 ns
    per pixel for OpenSlide's painting), else read by OpenSlide; either way the result is exactly
    ``read_scaled``'s. ``reader`` says which (one line).
    """

    def __init__(self, slide: Any, choice: Any) -> None:
        from aeutils import tiffread

        self.slide, self.choice = slide, choice
        self.mpp: float | None = choice.mpp
        self.name: str = slide.name
        self.width, self.height = (int(v) for v in choice.output_dimensions)
        self._tiles = tiffread.tile_reader(slide.path, choice.level, slide._handle())
        self.reader: str = ("tile decoding (verified identical to OpenSlide)" if self._tiles is not None
                            else f"OpenSlide ({tiffread.why_not(slide.path, choice.level)})")

    def read(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """h x w x 3 uint8 input pixels from input pixel (x0, y0)."""
        from aeutils.scale import read_scaled, resample_region, source_box

        c = self.choice
        bx0, by0, bx1, by1 = source_box(c, x0, y0, w, h) if c.resampled else (x0, y0, x0 + w, y0 + h)
        if self._tiles is not None and self._tiles.covers(bx0, by0, bx1 - bx0, by1 - by0):
            try:
                region = self._tiles.read(bx0, by0, bx1 - bx0, by1 - by0)
            except Exception:  # a bad tile: OpenSlide reads it, or names the problem
                return read_scaled(self.slide, c, x0, y0, w, h)
            return resample_region(c, region, bx0, by0, x0, y0, w, h)
        return read_scaled(self.slide, c, x0, y0, w, h)


@contextmanager
def readers_closed() -> Iterator[None]:
    """Close this process's :mod:`aeutils.tiffread` tile readers (their file handles) on the way out."""
    from aeutils.tiffread import close_readers

    try:
        yield
    finally:
        close_readers()


def mask_side(slide: Any, lo: int = 1024, hi: int = 2048) -> int:
    """Thumbnail side (px) for the tissue mask: the longer side of the smallest pyramid level with at
    least ``lo`` px (read as is, no larger level decoded and shrunk), at most ``hi``."""
    sides = sorted(max(int(d) for d in dims) for dims in slide.level_dimensions)
    fit = [v for v in sides if v >= lo]
    return min(fit[0], hi) if fit else hi
