"""Patches as tensors: the held-out split, the sample-slide patches, and a training Dataset.

Images are float tensors of RGB in [0, 1], shape 3xSxS (Nx3xSxS batched), S in level pixels of
the extraction level. Coordinates (``x``, ``y``) are level-0 pixels of the top-left corner.

Train / validation / test split (one rule everywhere, so the shipped model never saw its held-out
tissue, and the tissue that reported numbers come from was never used for a choice):

* three roles: ``"train"`` (fitting), ``"val"`` (every choice: objective, size, epochs, the checkpoint
  kept, loss weights), ``"test"`` (reported numbers only). ``HELD_OUT_FRACTION`` (25 %) of the data is
  held out and split in two halves, validation first.
* fewer than ``REGION_SPLIT_MAX_SLIDES`` (4) slides (the bundled pair): **each slide by region**.
  The bottom 25 % of each slide's height is held out: its upper half (``0.75 H <= y`` and
  ``y + size * downsample <= 0.875 H``) is validation, its lower half (``y >= 0.875 H``) is test;
  training patches end above ``0.75 H`` (``y + size * downsample <= 0.75 H``). Patches straddling
  either line are dropped. A slide whose band halves are lower than one patch (``0.125 H < size *
  downsample``) keeps the whole band as validation and has no test region. Holding out a whole slide of two would leave one tissue to train on.
  ``H`` is the slide's level-0 height: ``slide_heights`` if given, else the ``slide_height``
  column of ``manifest.csv`` (written by :func:`aeutils.patches.extract`), else (older manifests,
  plain folders) the bundled sample slide's known height, else derived as the largest
  ``y + size * downsample`` of that slide's rows (never more than the true height, so the cut is
  at or above the true one and no training patch reaches into the true held-out region).
  ``downsample`` is the manifest's ``downsample`` column if present, else 1 at level 0 and
  ``2**level`` above (the usual pyramid).
* 4 or more slides: **by slide**, no slide in two roles. A stable hash of each slide name orders the
  slides; the first ``ceil(HELD_OUT_FRACTION * n_slides)`` are held out, alternately validation and
  test in that order (one held-out slide: validation only, no test slide).
* a plain folder of images: file names ``<slide>_<x>_<y>.<ext>`` (what ``extract`` writes) are
  split as above; other names by a stable hash of the file name (12.5 % validation, 12.5 % test).

A corrupt or unreadable image raises :class:`~aeutils.errors.PatchError` naming its path (the
policy is *fail*, not skip: a broken extraction should be fixed, not silently trained around).
Reading is plain file I/O with no locks or retries, so it never hangs; the trainer's DataLoader
also has a timeout.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from aeutils.errors import PatchError
from aeutils.manifest import read_manifest  # torch-free: the one manifest reader
from aeutils.sample import SAMPLE_DIMENSIONS, SAMPLE_NAME, sample_slide

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "VALIDATION_FRACTION",
    "HELD_OUT_FRACTION",
    "REGION_SPLIT_MAX_SLIDES",
    "IMAGE_EXTENSIONS",
    "PatchRecord",
    "PatchDataset",
    "find_patches",
    "split_records",
    "region_split",
    "read_image",
    "sample_patches",
    "load_patches",
    "sample_slide",
]

#: fraction held out (a slide's bottom band, or a share of the slides): validation + test halves
HELD_OUT_FRACTION = 0.25
#: the older name of :data:`HELD_OUT_FRACTION` (the band's top line is where validation starts)
VALIDATION_FRACTION = HELD_OUT_FRACTION
#: below this many slides, every slide is split by region; from it on, by slide
REGION_SPLIT_MAX_SLIDES = 4
#: file name endings read as images in a plain folder
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
SPLITS = ("train", "val", "test", "all")

_SAMPLE_STEM = Path(SAMPLE_NAME).stem
_NAME_RE = re.compile(r"^(?P<slide>.+)_(?P<x>\d+)_(?P<y>\d+)$")


@dataclass(frozen=True)
class PatchRecord:
    """One patch image on disk and where it came from (``slide``/``x``/``y``/``size``/``level``
    are ``None``/0 when unknown, e.g. a plain folder of arbitrary images)."""

    path: Path
    slide: str | None = None
    x: int | None = None
    y: int | None = None
    size: int | None = None
    level: int = 0
    downsample: float = 1.0
    label: str | None = None
    slide_height: int | None = None  # level-0 height of the slide, when the manifest stores it


# --------------------------------------------------------------------------- discovery


def find_patches(source: str | os.PathLike[str]) -> list[PatchRecord]:
    """All patch images under ``source``: an extraction output (``manifest.csv``, read with
    :func:`aeutils.manifest.read_manifest`; paths relative to it) or a folder of images (flat or one
    sub-folder per class, searched recursively, sorted). Raises PatchError if there are none or the
    manifest is malformed."""
    root = Path(source)
    if not root.exists():
        raise PatchError(f"{root}: no such patch folder")
    if root.is_file() and root.name == "manifest.csv":
        root = root.parent
    if not root.is_dir():
        raise PatchError(f"{root}: expected a folder of patches (or an extraction output with manifest.csv)")
    manifest = root / "manifest.csv"
    records: list[PatchRecord] = []
    if manifest.is_file():
        for row in read_manifest(root):
            level = row["level"]
            ds = row.get("downsample")
            records.append(
                PatchRecord(
                    path=root / row["path"],
                    slide=row["slide"] or None,
                    x=row["x"],
                    y=row["y"],
                    size=row["size"],
                    level=level,
                    downsample=float(ds) if ds is not None else float(2**level),
                    label=None if row["label"] is None else str(row["label"]),
                    slide_height=row.get("slide_height"),
                )
            )
    else:
        for p in sorted(q for q in root.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file()):
            m = _NAME_RE.match(p.stem)
            label = p.parent.name if p.parent != root else None
            if m:
                records.append(PatchRecord(p, m["slide"], int(m["x"]), int(m["y"]), None, 0, 1.0, label))
            else:
                records.append(PatchRecord(p, label=label))
    if not records:
        raise PatchError(f"{root}: no patch images found (expected manifest.csv or {', '.join(IMAGE_EXTENSIONS)} files)")
    return records


# --------------------------------------------------------------------------- splitting


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def region_split(y: float, footprint: float, height: float, fraction: float = HELD_OUT_FRACTION) -> str | None:
    """Which role a patch of one slide has under the region rule: ``"train"`` if it ends above the
    line ``(1 - fraction) * height`` (``y + footprint <= line``; ``y`` its top, ``footprint`` =
    size x downsample, level-0 px), ``"val"`` if it lies in the upper half of the held-out band
    (``y >= line`` and ``y + footprint <= (1 - fraction / 2) * height``), ``"test"`` if it starts in
    the lower half (``y >= (1 - fraction / 2) * height``), ``None`` if it straddles a line (dropped).
    A band whose halves are lower than one footprint (a short slide) is all validation, no test."""
    line, mid = (1.0 - fraction) * height, (1.0 - fraction / 2.0) * height
    if y >= line:
        if footprint > mid - line:
            return "val"
        if y >= mid:
            return "test"
        return "val" if y + footprint <= mid else None
    if y + footprint <= line:
        return "train"
    return None


def _slide_height(name: str, recs: Sequence[PatchRecord], slide_heights: dict[str, int] | None) -> float:
    """Level-0 height of slide ``name``: given, stored in the manifest, the sample's, or derived."""
    if slide_heights and name in slide_heights:
        return float(slide_heights[name])
    stored = {r.slide_height for r in recs if r.slide_height}
    if stored:
        return float(max(stored))
    if name == _SAMPLE_STEM:
        return float(SAMPLE_DIMENSIONS[1])
    return float(max((r.y or 0) + (r.size or _image_side(r.path)) * r.downsample for r in recs))


def _image_side(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[1])
    except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file
        raise PatchError(f"{path}: corrupt or unreadable image ({_one_line(exc)})") from None


def split_records(
    records: Sequence[PatchRecord],
    split: str,
    *,
    fraction: float = HELD_OUT_FRACTION,
    slide_heights: dict[str, int] | None = None,
) -> list[PatchRecord]:
    """The ``split`` ("train", "val", "test" or "all") subset of ``records`` by the module's rule
    (each slide by region below :data:`REGION_SPLIT_MAX_SLIDES` slides, else by slide). Order is kept."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return list(records)
    located = [r for r in records if r.slide is not None and r.y is not None]
    unlocated = [r for r in records if not (r.slide is not None and r.y is not None)]
    side: dict[Path, str | None] = {}
    slides = sorted({r.slide for r in located}, key=lambda s: (_stable_hash(s), s))  # type: ignore[arg-type]
    if len(slides) >= REGION_SPLIT_MAX_SLIDES:
        held = slides[: max(1, math.ceil(fraction * len(slides)))]
        role = {name: ("val" if i % 2 == 0 else "test") for i, name in enumerate(held)}
        for r in located:
            side[r.path] = role.get(r.slide, "train")  # type: ignore[arg-type]
    else:
        for name in slides:
            recs = [r for r in located if r.slide == name]
            height = _slide_height(name, recs, slide_heights)  # type: ignore[arg-type]
            for r in recs:
                fp = (r.size or _image_side(r.path)) * r.downsample
                side[r.path] = region_split(float(r.y), fp, height, fraction)  # type: ignore[arg-type]
    for r in unlocated:
        u = (_stable_hash(r.path.name) % 10_000) / 10_000
        side[r.path] = "val" if u < fraction / 2 else "test" if u < fraction else "train"
    return [r for r in records if side.get(r.path) == split]


# --------------------------------------------------------------------------- reading


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


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
        raise PatchError(f"{p}: corrupt or unreadable image ({_one_line(exc)})") from None


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


def _check_crop(size: int) -> None:
    if size < 5 or size % 4 != 1:
        from aeutils.model import nearest_valid_sizes

        lo, hi = nearest_valid_sizes(size)
        raise ValueError(f"crop {size} px: the autoencoder needs 4k+1 px sides (nearest valid: {lo} or {hi})")


# --------------------------------------------------------------------------- augmentation


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


# --------------------------------------------------------------------------- convenience loaders


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
