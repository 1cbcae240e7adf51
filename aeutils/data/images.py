"""Reading patch images: a file -> HxWx3 uint8 RGB (:func:`read_image`) -> 3xHxW float tensor in [0, 1],
centre crops. A corrupt or unreadable image raises :class:`~aeutils.errors.PatchError` naming its path
(the policy is *fail*, not skip: a broken extraction should be fixed, not silently trained around).
Reading is plain file I/O with no locks or retries, so it never hangs; the trainer's DataLoader
also has a timeout."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aeutils.errors import PatchError, one_line

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["read_image"]


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as an HxWx3 uint8 RGB array; PatchError naming the path if it is missing,
    truncated or not an image."""
    from PIL import Image

    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            rgb = im.convert("RGB")
        return np.array(rgb, dtype=np.uint8)  # a writable copy
    except FileNotFoundError:
        raise PatchError(f"{p}: patch image is missing") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise PatchError(f"{p}: corrupt or unreadable image ({one_line(exc, 160)})") from None


def _to_tensor(rgb: np.ndarray) -> "torch.Tensor":
    import torch

    arr = rgb if rgb.flags.writeable and rgb.flags.c_contiguous else np.array(rgb)  # OpenSlide reads are read-only
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def _center_crop(t: "torch.Tensor", size: int, what: str) -> "torch.Tensor":
    h, w = t.shape[-2:]
    if h < size or w < size:
        raise PatchError(f"{what}: image is {w}x{h} px, smaller than the requested {size}x{size}")
    top, left = (h - size) // 2, (w - size) // 2
    return t[..., top : top + size, left : left + size]


def _image_side(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[1])
    except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file
        raise PatchError(f"{path}: corrupt or unreadable image ({one_line(exc, 160)})") from None
