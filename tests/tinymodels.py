"""Small, seeded autoencoders shared by the model tests (tests/ is on sys.path)."""
from __future__ import annotations

import torch

from aeutils.model import Autoencoder, AutoencoderConfig

#: one residual block per stage, the default widths: fast, same layout as the original design
SMALL = AutoencoderConfig(n_blocks=1)


def small_model(seed: int = 0, **changes) -> Autoencoder:
    """A seeded eval-mode Autoencoder with one block per stage and ``changes`` to the config."""
    torch.manual_seed(seed)
    return Autoencoder(AutoencoderConfig(**{"n_blocks": 1, **changes})).eval()

#: the smallest model the viz/encoding tests run: widths 8/8/4, one block per stage
TINY = AutoencoderConfig(widths=(8, 8, 4), n_blocks=1)


def tiny_model(seed: int = 0) -> Autoencoder:
    """A seeded eval-mode Autoencoder of :data:`TINY`."""
    torch.manual_seed(seed)
    return Autoencoder(TINY).eval()
