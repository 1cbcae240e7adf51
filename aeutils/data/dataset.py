"""Patches as tensors for training and evaluation: :class:`PatchDataset` (a ``torch.utils.data.Dataset``
over one split of an extraction output or image folder) and :func:`load_patches` (the first N patches
as one Nx3xSxS batch). Images are float RGB in [0, 1], 3xSxS, S in level pixels."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from aeutils.data.augment import hed_jitter
from aeutils.data.images import _center_crop, _to_tensor, read_image
from aeutils.data.records import PatchRecord, find_patches
from aeutils.data.splits import split_records
from aeutils.errors import PatchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["PatchDataset", "load_patches"]


def _check_crop(size: int) -> None:
    if size < 5 or size % 4 != 1:
        from aeutils.model import nearest_valid_sizes

        lo, hi = nearest_valid_sizes(size)
        raise ValueError(f"crop {size} px: the autoencoder needs 4k+1 px sides (nearest valid: {lo} or {hi})")


class PatchDataset:
    """A ``torch.utils.data.Dataset`` of patches (3xSxS float RGB in [0, 1]) from an extraction
    output or a folder of images, one split of it.

    Args:
        source: extraction folder (``manifest.csv``) or image folder; or a list of PatchRecord.
        split: "train", "val" or "all" (see the module docstring for the rule).
        crop: output side in pixels (4k+1, e.g. 181, 121, 93); ``None`` keeps the image size
            (which must then be 4k+1). Training crops at a random position, otherwise centred.
        augment: random crop position, flips and 90-degree rotations (histology has no
            orientation) and, if ``stain_jitter > 0``, HED stain jitter.
        stain_jitter: strength s of the HED jitter: per stain, scale ``1 + U(-s, s)`` and shift
            ``U(-s, s) / 10`` (stain optical densities are ~0.0-0.2). 0.02-0.05 is mild. 0: off.
        slide_heights: level-0 heights by slide name for the single-slide region split.

    Randomness comes from ``torch``'s RNG (per DataLoader worker), so a seeded run is
    reproducible. Unreadable images raise PatchError with the path.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[PatchRecord],
        split: str = "train",
        *,
        crop: int | None = 181,
        augment: bool | None = None,
        stain_jitter: float = 0.0,
        slide_heights: dict[str, int] | None = None,
    ) -> None:
        if isinstance(source, (str, os.PathLike)):
            self.source: Path | None = Path(source)
            records = find_patches(source)
        else:
            self.source = None
            records = list(source)
        self.records = split_records(records, split, slide_heights=slide_heights)
        self.split = split
        if crop is not None:
            _check_crop(crop)
        self.crop = crop
        self.augment = (split == "train") if augment is None else bool(augment)
        if stain_jitter < 0:
            raise ValueError("stain_jitter must be >= 0")
        self.stain_jitter = float(stain_jitter)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (
            f"PatchDataset({self.source}, split={self.split!r}, n={len(self)}, crop={self.crop}, "
            f"augment={self.augment}, stain_jitter={self.stain_jitter})"
        )

    def __getitem__(self, index: int) -> "torch.Tensor":
        import torch

        rec = self.records[index]
        rgb = read_image(rec.path)
        h, w = rgb.shape[:2]
        size = self.crop
        if size is None:
            size = min(h, w)
            if h != w or size % 4 != 1:
                raise PatchError(f"{rec.path}: {w}x{h} px is not a square 4k+1 patch; pass crop=")
        if h < size or w < size:
            raise PatchError(f"{rec.path}: image is {w}x{h} px, smaller than the crop {size}x{size}")
        if self.augment:
            top = int(torch.randint(0, h - size + 1, ()).item())
            left = int(torch.randint(0, w - size + 1, ()).item())
        else:
            top, left = (h - size) // 2, (w - size) // 2
        rgb = rgb[top : top + size, left : left + size]
        if self.augment and self.stain_jitter > 0:
            u = torch.rand(6).numpy() * 2.0 - 1.0
            s = self.stain_jitter
            x = torch.from_numpy(hed_jitter(rgb, u[:3] * s, u[3:] * s / 10.0)).permute(2, 0, 1)
        else:
            x = _to_tensor(rgb)
        if self.augment:
            flips = torch.randint(0, 2, (2,))
            k = int(torch.randint(0, 4, ()).item())
            if flips[0]:
                x = x.flip(-1)
            if flips[1]:
                x = x.flip(-2)
            if k:
                x = torch.rot90(x, k, dims=(-2, -1))
        return x.contiguous()


def load_patches(
    source: "str | os.PathLike[str] | torch.Tensor",
    n: int | None = None,
    size: int = 181,
    *,
    split: str = "all",
) -> "torch.Tensor":
    """The first ``n`` patches (all if ``None``) of ``source`` as an Nx3xSxS float tensor in
    [0, 1], centre-cropped to ``size`` px. ``source``: an extraction folder (manifest order), a
    folder of images (sorted), or a tensor (Nx3xHxW or 3xHxW, in [0, 1], or uint8 0-255)."""
    import torch

    if isinstance(source, torch.Tensor):
        t = source.unsqueeze(0) if source.ndim == 3 else source
        if t.ndim != 4 or t.shape[1] != 3:
            raise PatchError(f"tensor source: expected Nx3xHxW, got shape {tuple(source.shape)}")
        t = t.float().div(255.0) if t.dtype == torch.uint8 else t.float()
        return _center_crop(t[:n] if n is not None else t, size, "tensor source").contiguous()
    records = split_records(find_patches(source), split)
    if n is not None:
        records = records[:n]
    if not records:
        raise PatchError(f"{source}: no patches in split {split!r}")
    return torch.stack([_center_crop(_to_tensor(read_image(r.path)), size, str(r.path)) for r in records])
