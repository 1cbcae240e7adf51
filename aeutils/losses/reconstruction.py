"""The autoencoder's training objective: a weighted sum of pixel and structure terms
(:class:`ReconstructionLoss`, used by :mod:`aeutils.training`)."""
from __future__ import annotations

import os

import torch
from torch import nn

from aeutils.errors import TrainingError

__all__ = ["ReconstructionLoss"]


class ReconstructionLoss(nn.Module):
    """Weighted sum of reconstruction terms between ``pred`` and ``target`` (Nx3xHxW RGB in [0, 1]).

    ``mse`` (default 1), ``l1``, ``ssim`` (``1 - SSIM``, torchmetrics, Gaussian 11x11 window) and
    ``vgg`` (ImageNet-VGG19 content term, :class:`aeutils.losses.VGGContentLoss`, only from the
    local ``vgg_weights`` file). Every term passes gradients to ``pred``; only the target side of
    the VGG term is computed without gradients. Terms are computed in float32.

    ``forward`` returns ``(total, parts)``: a scalar tensor and a dict of the unweighted terms.
    """

    def __init__(
        self, mse: float = 1.0, l1: float = 0.0, ssim: float = 0.0, vgg: float = 0.0, vgg_weights: str | os.PathLike[str] | None = None
    ) -> None:
        super().__init__()
        self.weights = {k: float(v) for k, v in (("mse", mse), ("l1", l1), ("ssim", ssim), ("vgg", vgg)) if v}
        if any(v < 0 for v in self.weights.values()):
            raise TrainingError(f"loss weights must be >= 0, got {self.weights}")
        if not self.weights:
            raise TrainingError("all loss weights are zero: give at least one of mse, l1, ssim, vgg")
        self.vgg: nn.Module | None = None
        if vgg:
            if vgg_weights is None:
                raise TrainingError(
                    "the VGG loss term needs a local VGG19 weights file (--vgg-weights path/to/vgg19-dcbb9e9d.pth); "
                    "nothing is downloaded"
                )
            try:
                from aeutils.losses import VGGContentLoss
            except ImportError as exc:  # pragma: no cover - the loss module ships with the package
                raise TrainingError(f"the VGG loss term needs aeutils.losses.VGGContentLoss ({exc})") from None
            self.vgg = VGGContentLoss(weights=vgg_weights)
        elif vgg_weights is not None:
            raise TrainingError("--vgg-weights given but the VGG term's weight is 0 (pass --vgg W)")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchmetrics.functional.image import structural_similarity_index_measure

        p, t = pred.float(), target.float()
        parts: dict[str, torch.Tensor] = {}
        if "mse" in self.weights:
            parts["mse"] = torch.nn.functional.mse_loss(p, t)
        if "l1" in self.weights:
            parts["l1"] = torch.nn.functional.l1_loss(p, t)
        if "ssim" in self.weights:
            parts["ssim"] = 1.0 - structural_similarity_index_measure(p, t, data_range=1.0)
        if self.vgg is not None:
            parts["vgg"] = self.vgg(p, t)  # target side runs under no_grad inside VGGContentLoss
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, parts  # type: ignore[return-value]
