"""The content-loss bench's small x4 network and its loop: does a content loss added to pixel MSE help?

:class:`SRNet` (a few residual blocks + two PixelShuffle x2 steps, on top of a bicubic upsample) is
trained by :func:`train_sr` on high-resolution (HR) patches (level 0, 0.499 um/px) against low-resolution
(LR) inputs made by bicubic antialiased x4 downsampling (~2 um/px), with ``loss="mse"`` or
``loss="mse+content"`` (MSE + ``content_weight`` x any content loss), same seed, data order and steps
(:mod:`aeutils.sr.search` trains every arm this way). The SRGAN generator is :mod:`aeutils.sr.arch`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from aeutils.errors import TrainingError
from aeutils.sr.degrade import SCALE, downscale, upscale_bicubic  # noqa: F401

#: ``train_sr(loss=CONTENT, content_loss=L)``: MSE + any content loss (bench/sr_losses.py's arms)
CONTENT = "mse+content"
LOSSES = ("mse", CONTENT)


class _Block(nn.Module):
    """x + conv(relu(conv(x))) (EDSR-style, no BatchNorm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRNet(nn.Module):
    """x4 SR network: Nx3xhxw RGB in [0, 1] -> Nx3x4hx4w (bicubic upsample + a learned residual:
    head conv, ``n_blocks`` residual blocks, two conv + PixelShuffle(2) steps, output conv).
    Clamped to [0, 1] in eval mode only."""

    def __init__(self, channels: int = 32, n_blocks: int = 4) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[_Block(channels) for _ in range(n_blocks)], nn.Conv2d(channels, channels, 3, padding=1))
        up: list[nn.Module] = []
        for _ in range(2):
            up += [nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2), nn.ReLU(inplace=True)]
        self.up = nn.Sequential(*up, nn.Conv2d(channels, 3, 3, padding=1))
        nn.init.zeros_(self.up[-1].weight)  # starts as bicubic exactly
        nn.init.zeros_(self.up[-1].bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise ValueError(f"expected an Nx3xhxw RGB batch in [0, 1], got shape {tuple(lr.shape)}")
        h = self.head(lr)
        y = upscale_bicubic(lr, SCALE, clamp=False) + self.up(h + self.body(h))
        return y if self.training else y.clamp(0, 1)


@dataclass
class SRRun:
    """A trained SR model and its log (one dict per logged step: step, loss, mse, encoding, seconds)."""

    model: SRNet
    loss: str
    history: list[dict[str, float]] = field(default_factory=list)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Same random flip / rot90 for the whole batch (cheap, deterministic with ``g``)."""
    k = int(torch.randint(4, (1,), generator=g))
    x = torch.rot90(x, k, dims=(-2, -1))
    return x.flip(-1) if int(torch.randint(2, (1,), generator=g)) else x


def train_sr(
    *,
    loss: str = "mse",
    steps: int = 200,
    seed: int = 0,
    patches: torch.Tensor | None = None,
    n_patches: int = 64,
    hr_size: int = 96,
    batch_size: int = 8,
    lr: float = 1e-3,
    channels: int = 32,
    n_blocks: int = 4,
    content_weight: float = 1.0,
    device: str | torch.device | None = None,
    log_every: int = 10,
    content_loss: nn.Module | None = None,
) -> SRRun:
    """Train an :class:`SRNet` for ``steps`` Adam steps and return it (eval mode, on the CPU) with its log.

    Args:
        loss: ``"mse"`` (pixel MSE) or ``"mse+content"`` (MSE + ``content_weight`` x ``content_loss``).
        seed: fixes the initial weights and the batch order; equal seeds and steps give the two
            variants the same init and the same batches.
        patches: HR training patches Nx3xSxS in [0, 1], S a multiple of 4; default
            ``aeutils.data.sample_patches(n_patches, hr_size, split="train", seed=seed)``.
        device: default :func:`aeutils.device.pick_device`.
        content_loss: for ``"mse+content"``: any ``L(pred, target)`` content loss (an EncodingLoss, an
            ImageNet baseline of :mod:`aeutils.losses.imagenet`), weighted by ``content_weight``.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    from aeutils.device import pick_device

    dev = pick_device(str(device) if device is not None else None, quiet=True)
    if patches is None:
        from aeutils.data import sample_patches

        patches = sample_patches(n_patches, hr_size, split="train", seed=seed)
    if patches.ndim != 4 or patches.shape[-1] % SCALE or patches.shape[-2] % SCALE:
        raise ValueError(f"HR patches must be Nx3xSxS with S a multiple of {SCALE}, got {tuple(patches.shape)}")
    enc = None
    if loss == CONTENT:
        if content_loss is None:
            raise ValueError('loss="mse+content" needs content_loss=')
        enc = content_loss.to(dev)
    torch.manual_seed(seed)
    model = SRNet(channels, n_blocks).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    g = torch.Generator().manual_seed(seed)
    data = patches.float()
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(len(data), (min(batch_size, len(data)),), generator=g)
        hr = _augment(data[idx], g).to(dev)
        pred = model(downscale(hr))
        mse = F.mse_loss(pred, hr)
        total = mse
        enc_value = torch.zeros(())
        if enc is not None:
            enc_value = enc(pred, hr)
            total = mse + content_weight * enc_value
        if not torch.isfinite(total):
            raise TrainingError(f"SR training ({loss}): non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step in (1, steps):
            history.append({"step": step, "loss": total.item(), "mse": mse.item(), "encoding": enc_value.item(),
                            "seconds": time.perf_counter() - t0})
    return SRRun(model.cpu().eval(), loss, history)


@torch.no_grad()
def super_resolve(model: nn.Module, lr: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """``model`` (eval mode, CPU) applied to Nx3xhxw LR in batches -> Nx3x4hx4w in [0, 1]."""
    model.eval()
    return torch.cat([model(chunk).clamp(0, 1) for chunk in lr.split(batch_size)])
