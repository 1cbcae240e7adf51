"""What every content loss here shares: the call convention's checks, the pointwise criteria, the
frozen-module behaviour (always eval mode, no trainable parameters) and conv+BN folding.

A content loss is called as ``loss = L(pred, target)`` on Nx3xHxW RGB in [0, 1] and returns a scalar.
"""
from __future__ import annotations

import torch
from torch import nn

from aeutils.model import _check_batch

CRITERIA = ("l1", "l2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: added to the variance before the square root in ``normalize="instance"``: a constant feature map
#: (a dead ReLU channel, a flat white crop) gets a finite gradient, not 0/0
INSTANCE_EPS = 1e-8


def _check_criterion(criterion: str) -> str:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    return criterion


def _pointwise(criterion: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| ("l1") or (a - b)^2 ("l2"), elementwise."""
    return (a - b).abs() if criterion == "l1" else (a - b).square()


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Both are batches the encoder takes (:func:`aeutils.model._check_batch`: integer dtype ->
    ``TypeError``, other shape -> ``ValueError``), of one shape, and finite: a NaN or inf would make
    the loss NaN silently, so it raises ``ValueError`` naming the input (one ``isfinite`` pass each)."""
    _check_batch(pred, name="pred")
    _check_batch(target, name="target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    for name, x in (("pred", pred), ("target", target)):
        if not bool(torch.isfinite(x.detach()).all()):
            raise ValueError(f"{name} has NaN or infinite values: expected finite RGB in [0, 1] "
                             f"(the loss would be NaN)")


def _instance_norm(a: torch.Tensor) -> torch.Tensor:
    """Each channel of each image standardised over its pixels (float32 arithmetic, finite gradient
    for constant maps: ``sqrt(var + INSTANCE_EPS)``)."""
    mean = a.mean(dim=(2, 3), keepdim=True)
    var = a.var(dim=(2, 3), keepdim=True, unbiased=False)
    return (a - mean) / (var + INSTANCE_EPS).sqrt()


def _fuse_conv_bn(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential`` into
    that conv (exact in eval mode; fewer passes over memory). Works in place on a copy; returns it."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.modules():
        if isinstance(child, nn.Sequential):
            for i in range(len(child) - 1):
                conv, bn = child[i], child[i + 1]
                if type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d):
                    child[i] = fuse_conv_bn_eval(conv, bn)
                    child[i + 1] = nn.Identity()
    return module


class _Frozen(nn.Module):
    """Mixin behaviour: always eval mode, no trainable parameters."""

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "_Frozen":
        """Ignored: a frozen loss stays in eval mode (BatchNorm never uses batch statistics), even
        when the SR model that owns it calls ``.train()``."""
        return super().train(False)
