"""Tissue patches of the bundled sample slides (:func:`sample_patches`), cut on the fly from one role
of the region split: what notebooks, figures and benches use when no extraction is at hand."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aeutils.data.images import _to_tensor
from aeutils.data.splits import SPLITS, region_split
from aeutils.errors import PatchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["sample_patches"]


@lru_cache(maxsize=16)
def _sample_grid(size: int, stride: int, slide: int) -> tuple[tuple[int, int, str | None], ...]:
    """Every tissue cell of a bundled slide's grid with its role: (x, y, role)."""
    from aeutils.patches import plan_grid
    from aeutils.slides import open_slide

    with open_slide(_bundled(slide)) as sl:
        height = sl.dimensions[1]
        cells = plan_grid(sl, patch_size=size, level=0, stride=stride, min_tissue=0.5)
    return tuple((c.x, c.y, region_split(c.y, c.size, height)) for c in cells)


def _sample_cells(size: int, split: str, stride: int, slide: int = 0) -> tuple[tuple[int, int], ...]:
    return tuple((x, y) for x, y, role in _sample_grid(size, stride, slide) if role == split)


def _bundled(slide: int) -> Path:
    from aeutils.sample import SAMPLES, sample_slides

    if slide not in range(len(SAMPLES)):
        raise ValueError(f"slide must be an index of aeutils.sample.SAMPLES (0..{len(SAMPLES) - 1}), got {slide!r}")
    return sample_slides()[slide]


def sample_patches(n: int = 16, size: int = 181, split: str = "val", seed: int = 0, slide: int = 0) -> "torch.Tensor":
    """``n`` tissue patches of a bundled slide as an Nx3xSxS float tensor in [0, 1] (level 0, about
    0.5 um/px), from one role of the region split ("val": upper half of the held-out bottom 25 %,
    "test": its lower half, "train", or "all"). ``slide``: index into :data:`aeutils.sample.SAMPLES`
    (0: the CMU skin region, 1: the prostate). Deterministic for a given seed; for one seed, a smaller
    ``n`` gives a prefix of a larger one.

    Patches come from a non-overlapping grid (stride = size) of cells with >= 50 % tissue; if that
    has fewer than ``n`` cells, half and then quarter strides (overlapping patches) are used.
    """
    import torch

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = _bundled(slide)
    cells: tuple[tuple[int, int], ...] = ()
    for stride in (size, max(1, size // 2), max(1, size // 4)):
        roles = ("train", "val", "test") if split == "all" else (split,)
        cells = tuple(c for role in roles for c in _sample_cells(size, role, stride, slide))
        if len(cells) >= n:
            break
    if len(cells) < n:
        raise PatchError(f"{path}: only {len(cells)} tissue patches of {size} px in the {split!r} split, {n} requested")
    order = np.random.default_rng(seed).permutation(len(cells))[:n]
    from aeutils.slides import open_slide

    out = []
    with open_slide(path) as sl:
        for i in order:
            x, y = cells[int(i)]
            out.append(_to_tensor(sl.read_region(x, y, 0, size)))
    return torch.stack(out)
