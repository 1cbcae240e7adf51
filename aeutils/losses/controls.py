"""Controls for the encoding loss: the same loss through an encoder of the same architecture with
random weights (what training the encoder adds over its architecture)."""
from __future__ import annotations

import torch

from aeutils.losses.encoding import EncodingLoss

__all__ = ["random_encoding_loss"]


def random_encoding_loss(reference: EncodingLoss | None = None, *, seed: int = 0, config=None, **kwargs) -> EncodingLoss:
    """:class:`~aeutils.losses.EncodingLoss` through a randomly initialised encoder (``seed``) of the
    architecture ``config`` (an :class:`~aeutils.model.AutoencoderConfig`; default: the shipped
    model's); with ``reference``, its taps, criterion and normalisation are copied (``kwargs`` win)."""
    from aeutils.checkpoint import load_pretrained
    from aeutils.model import Autoencoder

    if config is None:
        config = load_pretrained().config
    torch.manual_seed(seed)
    model = Autoencoder(config).eval()
    if reference is not None:
        kwargs = {"layer_weights": reference.layer_weights, "criterion": reference.criterion,
                  "normalize": reference.normalize, **kwargs}
    return EncodingLoss(model=model, **kwargs)
