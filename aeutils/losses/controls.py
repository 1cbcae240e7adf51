"""Controls for the encoding loss: the same loss through an encoder of the same architecture with
random weights (what training the encoder adds over its architecture). :func:`random_encoder` is the
one random-weight control: every bench (``bench/sr_losses.py``, ``bench/loss_sensitivity.py``) and
notebook 05 use it, so "random" means the same encoder everywhere for one seed."""
from __future__ import annotations

from typing import Any

import torch

from aeutils.losses.encoding import EncodingLoss
from aeutils.model import Autoencoder, AutoencoderConfig

__all__ = ["random_encoder", "random_encoding_loss"]


def random_encoder(config: AutoencoderConfig | None = None, *, seed: int = 0) -> Autoencoder:
    """An :class:`~aeutils.model.Autoencoder` of architecture ``config`` (default: the shipped model's)
    with freshly initialised weights drawn from ``torch.manual_seed(seed)``, in eval mode: the random
    control. The same ``(config, seed)`` always gives the same weights; torch's global RNG is left as it
    was (the draw happens in a forked RNG state)."""
    if config is None:
        from aeutils.checkpoint import load_model

        config = load_model().config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Autoencoder(config).eval()


def random_encoding_loss(
    reference: EncodingLoss | None = None, *, seed: int = 0, config: AutoencoderConfig | None = None, **kwargs: Any
) -> EncodingLoss:
    """:class:`~aeutils.losses.EncodingLoss` through :func:`random_encoder` ``(config, seed=seed)``; with
    ``reference``, its architecture (unless ``config`` is given), taps, criterion, normalisation, pool and shift are
    copied (``kwargs`` win)."""
    if reference is not None:
        config = config or reference.encoder.config
        kwargs = {"tap_weights": reference.tap_weights, "criterion": reference.criterion,
                  "normalize": reference.normalize, "pool": reference.pool,
                  "shift": reference.shift, **kwargs}
    return EncodingLoss(model=random_encoder(config, seed=seed), **kwargs)
