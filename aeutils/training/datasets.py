"""The run's data: training and validation datasets over the patch folder (split as in
:mod:`aeutils.data`), every image checked before the first epoch (so a corrupt file costs no
training), and the per-epoch loaders (seeded shuffling; a DistributedSampler under ``torchrun``)."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from aeutils.data import PatchDataset, read_image
from aeutils.errors import TrainingError
from aeutils.training.config import TrainConfig

__all__ = ["RunData", "run_data", "val_dataset", "check_manifest", "check_images", "loader_workers", "val_batches"]


@dataclass
class RunData:
    """The datasets of a run: ``train`` (random ``crop`` x ``crop`` crops, augmented), ``val`` (whole
    4k+1 patches, at most ``val_limit`` of them, evenly spaced), optimiser steps per epoch (all ranks
    together) and DataLoader ``workers`` per rank."""

    train: PatchDataset
    val: Any
    steps_per_epoch: int
    workers: int

    def loader(self, cfg: TrainConfig, epoch: int, rank: int, world: int, device: torch.device, start: int = 0) -> Any:
        """The training batches of ``epoch`` (0-based) from its ``start``-th batch on: shuffled by a
        generator seeded from the seed and the epoch (so a resumed run draws the same order), across
        ranks by a DistributedSampler. ``len()`` is the number of batches left.

        ``start`` > 0 continues an epoch a stop cut short, yielding exactly the batches an uninterrupted
        run gets next: without workers the skipped batches are only index lists (no image read, no
        random number drawn: the run restores the main process's RNG state); with workers they are
        loaded and dropped, so each worker's RNG (seeded per epoch) advances as it would have."""
        from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        if world > 1:
            sampler: Any = DistributedSampler(self.train, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                              drop_last=True)
            sampler.set_epoch(epoch)
        else:  # what DataLoader(shuffle=True, generator=...) builds, so the order is the one runs always had
            sampler = RandomSampler(self.train, generator=generator)
        batches: Any = BatchSampler(sampler, cfg.batch_size, drop_last=True)
        if start and not self.workers:
            batches = _From(batches, start)
        loader = DataLoader(
            self.train, batch_sampler=batches, num_workers=self.workers, pin_memory=device.type == "cuda",
            timeout=300 if self.workers else 0, generator=generator, persistent_workers=False,
        )
        return _From(loader, start) if start and self.workers else loader


class _From:
    """The items of ``inner`` (a batch sampler or a DataLoader) from the ``start``-th on."""

    def __init__(self, inner: Any, start: int) -> None:
        self.inner, self.start = inner, start

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.inner), self.start, None)


def run_data(patches_dir: Path, cfg: TrainConfig, device: torch.device, world: int) -> RunData:
    """The :class:`RunData` of ``patches_dir``; TrainingError for fewer patches than one batch on every
    rank, PatchError (naming the file) for a missing or corrupt image."""
    train_ds = PatchDataset(patches_dir, "train", crop=cfg.crop, stain_jitter=cfg.stain_jitter)
    if len(train_ds) < cfg.batch_size * world:
        raise TrainingError(
            f"{patches_dir}: {len(train_ds)} training patches, fewer than one batch ({cfg.batch_size} x {world} processes)"
        )
    val_ds = val_dataset(patches_dir, cfg, train_ds)
    workers = loader_workers(device, world) if cfg.workers is None else cfg.workers
    check_images(train_ds, val_ds)  # a corrupt patch is found now, not after an epoch of training
    return RunData(train_ds, val_ds, len(train_ds) // (cfg.batch_size * world), workers)


def val_dataset(patches_dir: Path, cfg: TrainConfig, train_ds: PatchDataset | None = None) -> Any:
    """The run's validation patches: the ``"val"`` role of ``patches_dir``, whole patches (the largest 4k+1
    side of the first training patch, so metrics are comparable across crops), at most ``cfg.val_limit``
    of them evenly spaced. Items are 3xSxS float tensors in [0, 1]."""
    from torch.utils.data import Subset

    if train_ds is None:
        train_ds = PatchDataset(patches_dir, "train", crop=cfg.crop)
    val_full = PatchDataset(patches_dir, "val", crop=_val_crop(train_ds, cfg.crop), augment=False)
    if cfg.val_limit is not None and len(val_full) > cfg.val_limit:
        return Subset(val_full, np.linspace(0, len(val_full) - 1, cfg.val_limit).round().astype(int).tolist())
    return val_full


def check_manifest(patches_dir: Path) -> None:
    """A manifest that lists no patches (header only) is said so, before the data module looks for images."""
    manifest = patches_dir if patches_dir.name == "manifest.csv" else patches_dir / "manifest.csv"
    if manifest.is_file():
        from aeutils.manifest import read_manifest

        if not read_manifest(manifest):
            raise TrainingError(f"no patches listed in {manifest} (an extraction that found no tissue? rerun extract)")


def check_images(train_ds: Any, val_ds: Any) -> None:
    """Every image checked before the first epoch, so a bad file does not cost an epoch: the
    validation patches this run uses are decoded (they are read every epoch anyway), the training
    ones structure-checked (PIL ``verify``: chunks and CRCs, no decoding). PatchError names the file."""
    from PIL import Image

    from aeutils.errors import PatchError

    for i in range(len(val_ds)):
        val_ds[i]
    for rec in train_ds.records:
        try:
            with Image.open(rec.path) as im:
                im.verify()
        except FileNotFoundError:
            raise PatchError(f"{rec.path}: patch image is missing") from None
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
            raise PatchError(f"{rec.path}: corrupt or unreadable image ({type(exc).__name__}: {exc})") from None


def loader_workers(device: torch.device, world: int) -> int:
    """DataLoader worker processes per rank (``cfg.workers=None``) from the cores this process may use
    (CPU affinity, not the host's count) shared by the ``LOCAL_WORLD_SIZE`` ranks; not to be confused
    with :func:`aeutils.patches.default_workers` (extraction processes: the usable cores)."""
    try:
        cpus = max(1, len(os.sched_getaffinity(0)))  # type: ignore[attr-defined]
    except AttributeError:
        cpus = max(1, os.cpu_count() or 1)
    per_rank = max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if device.type == "cuda":
        return min(8, max(1, per_rank - 1))
    return 0 if per_rank <= 2 else min(4, per_rank // 2)


def _val_crop(ds: PatchDataset, crop: int) -> int:
    """Validate on the whole patch (largest 4k+1 side that fits), so metrics are comparable across crops."""
    if not len(ds):
        return crop
    h, w = read_image(ds.records[0].path).shape[:2]
    side = min(h, w)
    return max(5, side - (side - 1) % 4)


def val_batches(ds: Any, batch_size: int) -> Iterable[torch.Tensor]:
    """``ds`` (validation images, no augmentation) as stacked Nx3xHxW batches of ``batch_size``, in order."""
    for i in range(0, len(ds), batch_size):
        yield torch.stack([ds[j] for j in range(i, min(len(ds), i + batch_size))])
