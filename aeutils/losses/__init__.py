"""Losses, one place (as BasicSR's ``losses/``): every loss takes ``(pred, target)``, Nx3xHxW RGB in [0, 1].

    encoding        EncodingLoss: the trained encoder as a histology content (perceptual) loss
    controls        random_encoder (the one random-weight control) and random_encoding_loss, the same loss
                    through it
    imagenet        the ImageNet-feature baselines: VGGContentLoss (VGG19 relu3_1, local file),
                    EfficientNet-Lite0, VGG16-HED (the optional ``[baselines]`` extra)
    reconstruction  ReconstructionLoss: the autoencoder's training objective (MSE + L1 + SSIM + VGG)
    common          what they share (checks, criteria, frozen modules)
"""
from __future__ import annotations

from aeutils.losses.controls import random_encoder, random_encoding_loss
from aeutils.losses.encoding import EncodingLoss
from aeutils.losses.imagenet import (
    BaselineUnavailable, FeatureLoss, VGGContentLoss, efficientnet_lite0_loss, vgg16_hed_loss,
)
from aeutils.losses.reconstruction import ReconstructionLoss

__all__ = [
    "EncodingLoss", "random_encoder", "random_encoding_loss", "VGGContentLoss", "FeatureLoss", "BaselineUnavailable",
    "efficientnet_lite0_loss", "vgg16_hed_loss", "ReconstructionLoss",
]
