"""Patches as tensors: finding them, the held-out split, reading, augmenting, a training Dataset, and
patches of the bundled sample slides. A package, one idea per module:

    records   :func:`find_patches` -> :class:`PatchRecord` (an extraction output's manifest, or a folder)
    splits    the train / validation / test rule (:func:`split_records`, :func:`region_split`)
    images    :func:`read_image`: a file -> HxWx3 uint8 RGB; corrupt files raise ``PatchError`` naming them
    augment   :func:`hed_jitter`, the stain augmentation
    dataset   :class:`PatchDataset` (one split, crops, augmentations) and :func:`load_patches` (one batch)
    samples   :func:`sample_patches`: tissue patches of the bundled slides, by split role

Images are float tensors of RGB in [0, 1], shape 3xSxS (Nx3xSxS batched), S in level pixels of
the extraction level. Coordinates (``x``, ``y``) are level-0 pixels of the top-left corner.
Importing this package does not import torch.
"""
from __future__ import annotations

from aeutils.data.augment import hed_jitter
from aeutils.data.dataset import PatchDataset, load_patches
from aeutils.data.images import read_image
from aeutils.data.records import IMAGE_EXTENSIONS, PatchRecord, find_patches
from aeutils.data.samples import _sample_cells, sample_patches  # noqa: F401 - _sample_cells: tests
from aeutils.data.splits import (
    HELD_OUT_FRACTION, REGION_SPLIT_MAX_SLIDES, SPLITS, VALIDATION_FRACTION, region_split, split_records,
)
from aeutils.sample import sample_slide  # noqa: F401 - importable from here before the split

__all__ = [
    "HELD_OUT_FRACTION",
    "VALIDATION_FRACTION",
    "REGION_SPLIT_MAX_SLIDES",
    "SPLITS",
    "IMAGE_EXTENSIONS",
    "PatchRecord",
    "PatchDataset",
    "find_patches",
    "split_records",
    "region_split",
    "read_image",
    "hed_jitter",
    "sample_patches",
    "load_patches",
]
