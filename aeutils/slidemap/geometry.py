"""Tile geometry of a seamless map, pure: cores, their margins and the latent grid, all in *input pixels*
(pixels at the scale chosen by :mod:`aeutils.scale`) unless named latent (4x coarser)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from aeutils.model import AutoencoderConfig

#: input pixels per encoding (latent) pixel
STRIDE = 4


def _round_up(v: float, m: int) -> int:
    return int(math.ceil(v / m) * m)


def encoder_margin(config: "AutoencoderConfig") -> int:
    """Input pixels of context needed on each side of a core: half the encoder's receptive field
    (:func:`aeutils.introspect.receptive_field`), rounded up to a multiple of 4 (the latent stride)."""
    from aeutils.introspect import receptive_field

    return _round_up((receptive_field(config) - 1) / 2, STRIDE)


def decoder_margin(config: "AutoencoderConfig") -> int:
    """Latent pixels of context the decoder needs around a core: one per (transposed) convolution
    (each reaches at most one latent pixel, the upsampled ones less), plus one."""
    import torch
    from torch import nn

    from aeutils.model import Autoencoder

    with torch.device("meta"):
        model = Autoencoder(config)
    return 1 + sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.decoder.modules())


def tile_margin(config: "AutoencoderConfig", reconstruction: bool = False) -> int:
    """Input pixels read around each core: :func:`encoder_margin`, plus 4 x :func:`decoder_margin`
    with ``reconstruction`` (so the decoded core is seamless too)."""
    return encoder_margin(config) + (STRIDE * decoder_margin(config) if reconstruction else 0)


@dataclass(frozen=True)
class TileGrid:
    """Cores of ``core`` px (multiple of 4) over a ``width`` x ``height`` px image, read with
    ``margin`` px (multiple of 4) of context on each side, clipped to the image."""

    width: int
    height: int
    core: int = 1024
    margin: int = 32

    def __post_init__(self) -> None:
        if self.core < STRIDE or self.core % STRIDE or self.margin < 0 or self.margin % STRIDE:
            raise ValueError(f"core ({self.core}) and margin ({self.margin}) must be multiples of {STRIDE}, core > 0")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"empty image ({self.width} x {self.height} px)")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of cores."""
        return -(-self.height // self.core), -(-self.width // self.core)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(height, width) of the whole encoding map: ceil(H/4) x ceil(W/4) latent pixels."""
        return -(-self.height // STRIDE), -(-self.width // STRIDE)

    def core_box(self, ty: int, tx: int) -> tuple[int, int, int, int]:
        """Input pixels (x0, y0, x1, y1) of core (ty, tx), exclusive ends."""
        x0, y0 = tx * self.core, ty * self.core
        return x0, y0, min(x0 + self.core, self.width), min(y0 + self.core, self.height)

    def read_box(self, ty: int, tx: int) -> tuple[int, int, int, int]:
        """Input pixels (x0, y0, x1, y1) read for core (ty, tx): the core plus ``margin``, clipped."""
        x0, y0, x1, y1 = self.core_box(ty, tx)
        m = self.margin
        return max(0, x0 - m), max(0, y0 - m), min(self.width, x1 + m), min(self.height, y1 + m)

    def latent_box(self, ty: int, tx: int) -> tuple[int, int, int, int]:
        """Latent pixels (x0, y0, x1, y1) of core (ty, tx) in the whole map."""
        x0, y0, x1, y1 = self.core_box(ty, tx)
        return x0 // STRIDE, y0 // STRIDE, -(-x1 // STRIDE), -(-y1 // STRIDE)

    def core_megapixels(self, tiles: list[tuple[int, int]]) -> float:
        """Input megapixels of the cores ``tiles`` ((ty, tx) each)."""
        total = 0
        for t in tiles:
            x0, y0, x1, y1 = self.core_box(*t)
            total += (x1 - x0) * (y1 - y0)
        return total / 1e6


def tissue_tiles(tissue: Any, grid: TileGrid, ds: float) -> list[tuple[int, int]]:
    """Cores (ty, tx), row-major, touching the tissue of ``tissue`` (a :class:`aeutils.tissue.TissueMask`
    of level 0); ``ds`` level-0 px per input px."""
    rows, cols = grid.shape
    cyx = [(ty, tx) for ty in range(rows) for tx in range(cols)]
    boxes = np.array([grid.core_box(ty, tx) for ty, tx in cyx], dtype=np.float64)
    frac = tissue.fractions(boxes[:, 0] * ds, boxes[:, 1] * ds, grid.core * ds, grid.core * ds)
    return [t for t, f in zip(cyx, frac) if f > 0]


def latent_mask(tissue: Any, grid: TileGrid, ty: int, tx: int, ds: float) -> np.ndarray:
    """Tissue mask (bool h x w) of core (ty, tx)'s latent pixels: the thumbnail mask at the level-0
    centre of each latent pixel's 4 x 4 input block (``ds`` level-0 px per input px)."""
    x0, y0, x1, y1 = grid.latent_box(ty, tx)
    H, W = tissue.mask.shape
    sx, sy = tissue.scale
    xs = np.clip(((np.arange(x0, x1) + 0.5) * STRIDE * ds * sx).astype(np.int64), 0, W - 1)
    ys = np.clip(((np.arange(y0, y1) + 0.5) * STRIDE * ds * sy).astype(np.int64), 0, H - 1)
    return tissue.mask[ys[:, None], xs[None, :]]
