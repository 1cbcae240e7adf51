"""The histology encoder inside BasicSR (the optional ``[basicsr]`` extra: ``basicsr-fixed==1.4.2``, which imports
with torchvision >= 0.17, plus ``opencv-python-headless``, ``addict``, ``yapf``, ``lmdb``).

Importing this module registers, under names that do not clash with BasicSR's own:

* ``HistoEncodingLoss`` (``LOSS_REGISTRY``): :class:`~aeutils.losses.EncodingLoss` as a BasicSR perceptual
  loss. BasicSR's SRGAN / ESRGAN models call ``cri_perceptual(output, gt)`` and expect ``(percep, style)``;
  this returns ``(loss, None)``. Options: ``perceptual_weight``, ``criterion`` (l1/l2), ``checkpoint`` (an
  mscopy-AE autoencoder; default the shipped one), ``layer_weights`` (tap -> weight), ``normalize``.
* ``HistoPatchDataset`` (``DATASET_REGISTRY``): HR crops from any ``python -m aeutils extract`` output (or image
  folder), the train / validation roles of :mod:`aeutils.data`, LR made on the fly by
  :func:`aeutils.sr.degrade.downscale` (antialiased bicubic x4), as ``{"lq", "gt", "lq_path", "gt_path"}``.
  Options: ``patches`` (the folder), ``gt_size`` (HR crop side, a multiple of 4), ``split`` (default: train
  for the train phase, val otherwise), ``use_flip_rot`` (train only; default true).

Train with BasicSR's own pipeline, this module imported first::

    python -m aeutils.sr.basicsr_plugin -opt examples/basicsr_srgan_histo.yml \\
        --force_yml datasets:train:patches=PATCHES

(the arguments are BasicSR's ``basicsr/train.py`` ones; experiments are written under the current folder).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Mapping

import torch

from aeutils.losses import EncodingLoss
from aeutils.sr.degrade import SCALE, downscale

try:
    from basicsr.utils.registry import DATASET_REGISTRY, LOSS_REGISTRY
except ImportError as exc:  # pragma: no cover - the extra is optional
    raise ImportError(f"aeutils.sr.basicsr_plugin needs the [basicsr] extra (pip install 'aeutils[basicsr]'): {exc}") from None

__all__ = ["HistoEncodingLoss", "HistoPatchDataset", "main"]


@LOSS_REGISTRY.register()
class HistoEncodingLoss(EncodingLoss):
    """EncodingLoss with BasicSR's perceptual-loss call convention: ``forward(x, gt) -> (loss, None)``."""

    def __init__(self, perceptual_weight: float = 1.0, criterion: str = "l1", checkpoint: str | None = None,
                 layer_weights: Mapping[str, float] | None = None, normalize: str = "instance") -> None:
        super().__init__(checkpoint=checkpoint, criterion=criterion, weight=perceptual_weight,
                         layer_weights=layer_weights, normalize=normalize)

    def forward(self, x: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return super().forward(x.clamp(0, 1), gt), None


@DATASET_REGISTRY.register()
class HistoPatchDataset(torch.utils.data.Dataset):
    """HR patches of an extract output with their x4 LR inputs made on the fly (see the module docstring)."""

    def __init__(self, opt: dict[str, Any]) -> None:
        from aeutils.data import PatchDataset

        super().__init__()
        self.gt_size = int(opt["gt_size"])
        if self.gt_size % SCALE:
            raise ValueError(f"HistoPatchDataset: gt_size {self.gt_size} is not a multiple of {SCALE}")
        if int(opt.get("scale", SCALE)) != SCALE:
            raise ValueError(f"HistoPatchDataset: only x{SCALE} (scale: {opt.get('scale')})")
        train = opt.get("phase", "train") == "train"
        split = opt.get("split") or ("train" if train else "val")
        self.data = PatchDataset(opt["patches"], split, crop=self.gt_size + 1,
                                 augment=train and bool(opt.get("use_flip_rot", True)))
        if not len(self.data):
            raise ValueError(f"HistoPatchDataset: no {split!r} patches in {opt['patches']}")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        gt = self.data[index][:, :-1, :-1]
        path = str(self.data.records[index].path)
        return {"lq": downscale(gt[None])[0], "gt": gt, "lq_path": path, "gt_path": path}


def main(argv: list[str] | None = None) -> None:
    """BasicSR's training pipeline (``basicsr.train.train_pipeline``) with these registrations, rooted at the
    current folder (``experiments/<name>/``)."""
    from basicsr.train import train_pipeline

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    train_pipeline(os.getcwd())


if __name__ == "__main__":
    main()
