"""The SRGAN networks: an SRResNet-style x4 generator and an SRGAN-style discriminator.

:class:`Generator` (Ledig et al. 2017, SRResNet, without BatchNorm as in EDSR/ESRGAN, so eval and training
behave alike and tiles of a slide are computed exactly as the whole would be): a 9x9 head conv, ``n_blocks``
residual blocks (conv3-PReLU-conv3), a conv and a long skip, two conv + PixelShuffle(2) + PReLU steps, a 9x9
output conv; added to the bicubic upsample of the input (the output conv starts at zero: an untrained
generator *is* bicubic, so a short CPU run starts from the baseline, not from grey). The paper's size (16
blocks x 64 channels) is :data:`PRESETS` ``"paper"`` (GPUs); ``"cpu"`` is 6 x 32.

:class:`Discriminator` (SRGAN's): conv-LeakyReLU, then conv(stride 1/2)-BN-LeakyReLU pairs doubling the
channels every two convs, global average pooling instead of the paper's flatten (any input size), and a
1024-unit head as 1x1 convs; one logit per image.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from aeutils.sr.degrade import SCALE, upscale_bicubic

__all__ = ["GeneratorConfig", "PRESETS", "Generator", "Discriminator"]


@dataclass(frozen=True)
class GeneratorConfig:
    """The generator's shape: ``n_blocks`` residual blocks of ``channels`` channels; ``bicubic_skip``: the
    output is bicubic(lr) + the network's residual (else the network alone, as the paper)."""

    n_blocks: int = 16
    channels: int = 64
    bicubic_skip: bool = True

    def __post_init__(self) -> None:
        for name in ("n_blocks", "channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"generator {name} must be an integer >= 1, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GeneratorConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown generator settings {unknown}")
        return cls(**data)


#: named sizes: (generator config, discriminator base channels)
PRESETS: dict[str, tuple[GeneratorConfig, int]] = {
    "paper": (GeneratorConfig(16, 64), 64),  # SRGAN's: ~1.5 M generator parameters
    "cpu": (GeneratorConfig(6, 32), 32),  # ~0.2 M: trains in minutes per hundred steps on 1-2 cores
    "tiny": (GeneratorConfig(1, 8), 8),  # tests
}


class _Residual(nn.Module):
    """x + conv3(PReLU(conv3(x))), C channels, shape kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),  # N x C x h x w
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, padding=1),  # N x C x h x w
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """x4 SR generator: Nx3xhxw RGB in [0, 1] -> Nx3x4hx4w (clamped to [0, 1] in eval mode only, so
    training sees the gradient everywhere). Fully convolutional: any h, w >= 1."""

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or GeneratorConfig()
        c = cfg.channels
        self.head = nn.Sequential(nn.Conv2d(3, c, 9, padding=4), nn.PReLU(c))  # N x C x h x w
        self.body = nn.Sequential(
            *[_Residual(c) for _ in range(cfg.n_blocks)],  # N x C x h x w
            nn.Conv2d(c, c, 3, padding=1),  # N x C x h x w (+ head: the long skip)
        )
        self.up = nn.Sequential(
            nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(c),  # N x C x 2h x 2w
            nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(c),  # N x C x 4h x 4w
            nn.Conv2d(c, 3, 9, padding=4),  # N x 3 x 4h x 4w
        )
        if cfg.bicubic_skip:  # start as bicubic exactly
            nn.init.zeros_(self.up[-1].weight)
            nn.init.zeros_(self.up[-1].bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise ValueError(f"expected an Nx3xhxw RGB batch in [0, 1], got shape {tuple(lr.shape)}")
        h = self.head(lr)
        y = self.up(h + self.body(h))
        if self.config.bicubic_skip:
            y = y + upscale_bicubic(lr, SCALE, clamp=False)
        return y if self.training else y.clamp(0, 1)

    def receptive_radius(self) -> int:
        """How many LR pixels around an LR pixel can change its 4x4 output pixels (an upper bound): the
        overlap tiles of a slide need so that their centres equal a one-shot run. Head 4, two per block,
        1 for the body's conv, 1 for each upsampling conv and 1 for the 9x9 output conv at 4x (each rounded
        up through the PixelShuffles); the bicubic skip reaches 2."""
        return 4 + 2 * self.config.n_blocks + 1 + 1 + 1 + 1


class Discriminator(nn.Module):
    """SRGAN discriminator: Nx3xHxW RGB in [0, 1] (H, W >= 16) -> N logits (real > 0). ``channels``: the
    first conv's width (the paper's 64), doubled every two convs up to 8x; four stride-2 convs."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        c = channels
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]  # N x c x H x W
        widths = [(c, c, 2), (c, 2 * c, 1), (2 * c, 2 * c, 2), (2 * c, 4 * c, 1), (4 * c, 4 * c, 2),
                  (4 * c, 8 * c, 1), (8 * c, 8 * c, 2)]  # after these: N x 8c x H/16 x W/16
        for cin, cout, stride in widths:
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout),
                       nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),  # N x 8c x 1 x 1
            nn.Conv2d(8 * c, 16 * c, 1), nn.LeakyReLU(0.2, inplace=True),  # the paper's dense 1024 (c=64)
            nn.Conv2d(16 * c, 1, 1),  # N x 1 x 1 x 1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x * 2 - 1)).flatten()
