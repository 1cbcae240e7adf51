"""The residual convolutional autoencoder: 3xSxS RGB in [0, 1] -> 1x((S+3)/4)x((S+3)/4) -> 3xSxS.

Default (:class:`AutoencoderConfig` ()) is the original design, 1,924,004 parameters::

    encoder  conv3x3/2 3->64, N blocks@64 | conv3x3/2 64->32, N blocks@32 | conv3x3 32->8, N blocks@8 | conv3x3 8->1
    decoder  convT3x3 1->8, N blocks@8 | convT3x3 8->32, N blocks@32 | convT3x3/2 32->64, N blocks@64 | convT3x3/2 64->3

Size contract: a stride-2 conv maps s -> ceil(s/2), a stride-2 transposed conv s -> 2s - 1, so only
sides s = 1 (mod 4) round-trip exactly (65, 181, 257, ...): 181 -> 91 -> 46 -> 91 -> 181.
Other sides raise ``ValueError`` naming the nearest valid ones. The rule is a *decoding* rule:
:meth:`Autoencoder.encoder_forward` encodes any side (a whole-slide tile: :mod:`aeutils.slidemap`).
Integer input (uint8 0-255) raises ``TypeError`` naming the conversion ``x.float() / 255``: one check,
:func:`_check_batch`, for the model, :class:`aeutils.losses.EncodingLoss` and :func:`aeutils.encoding.encode_batch`.

Words: a *stage* is a block of the model (a stage-changing conv and its residual blocks); a *tap* is a
point where the encoder's activations are read, named after the stage it ends (:data:`TAPS`: stage1,
stage2, stage3, latent). :class:`Encoder` is the encoder half alone (what
:class:`aeutils.losses.EncodingLoss` holds: no decoder).

Looking inside a model (shapes, FLOPs, receptive field) is :mod:`aeutils.introspect`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
from torch import nn

#: activation name -> module class; the config stores the name so checkpoints stay plain data
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

#: the encoder's taps, in order: the points where its activations are read (by
#: :class:`aeutils.losses.EncodingLoss`, :func:`aeutils.encoding.encode_batch`, the explorers). A *stage*
#: is a block of the model; each tap is named after the stage it ends: the ends of the three residual
#: stages (1/2, 1/4, 1/4 resolution), then the latent.
TAPS: tuple[str, ...] = ("stage1", "stage2", "stage3", "latent")

#: deprecated names -> (current name, value): still importable, with a ``DeprecationWarning``
_DEPRECATED = {"STAGES": ("TAPS", TAPS)}


def __getattr__(name: str) -> Any:
    """``aeutils.model.STAGES``: the old name of :data:`TAPS` (``DeprecationWarning``)."""
    if name in _DEPRECATED:
        import warnings

        new, value = _DEPRECATED[name]
        warnings.warn(f"aeutils.model.{name} is deprecated: use aeutils.model.{new}", DeprecationWarning, stacklevel=2)
        return value
    raise AttributeError(f"module 'aeutils.model' has no attribute {name!r}")


def unknown_fields(cls: type, data: dict[str, Any]) -> list[str]:
    """The keys of ``data`` that are not fields of the dataclass ``cls``, sorted (config ``from_dict`` checks)."""
    known = {f.name for f in fields(cls)}
    return sorted(set(data) - known)


@dataclass(frozen=True)
class AutoencoderConfig:
    """Everything needed to rebuild an :class:`Autoencoder`; saved with every checkpoint.

    Attributes:
        widths: channels of the three stages (full resolution/2, /4, /4).
        latent_channels: channels of the encoding (1: it can be looked at as an image).
        n_blocks: residual blocks per stage, in the encoder and the decoder each.
        stage_activation: apply ``activation`` after each stage-changing conv (not after the latent
            conv nor the output conv, which stay linear). Stored configs that say ``stage_relu``
            (the name before 0.1.0's rename) are read as this field.
        activation: one of :data:`ACTIVATIONS`.
        mean, std: per-channel normalisation applied inside the model to RGB inputs in [0, 1]
            (and undone on the output); buffers, so users never repeat it.
        in_channels: 3 (RGB).
    """

    widths: tuple[int, int, int] = (64, 32, 8)
    latent_channels: int = 1
    n_blocks: int = 10
    stage_activation: bool = True
    activation: str = "relu"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    in_channels: int = 3

    def __post_init__(self) -> None:
        # Normalise lists (from JSON / checkpoints) to tuples so configs compare equal.
        for name in ("widths", "mean", "std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ValueError(f"widths must be three positive ints, got {self.widths}")
        if self.latent_channels < 1 or self.n_blocks < 0:
            raise ValueError("latent_channels must be >= 1 and n_blocks >= 0")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} not in {sorted(ACTIVATIONS)}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels or min(self.std) <= 0:
            raise ValueError("mean and std need one value per input channel, std > 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists, numbers, strings) for checkpoints and JSON."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AutoencoderConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        if "stage_relu" in data and "stage_activation" not in data:  # configs stored before the rename
            data = {("stage_activation" if k == "stage_relu" else k): v for k, v in data.items()}
        unknown = unknown_fields(cls, data)
        if unknown:
            raise ValueError(f"unknown AutoencoderConfig fields: {', '.join(unknown)}")
        return cls(**data)


def latent_size(side: int) -> int:
    """Side of the encoding for an input side ``side`` (pixels): ceil(ceil(side/2)/2)."""
    return -(-(-(-side // 2)) // 2)


def nearest_valid_sizes(side: int) -> tuple[int, int]:
    """The valid sides (1 mod 4, >= 5) at or just below and at or just above ``side``."""
    if side <= 5:
        return 5, 5
    below = side - (side - 1) % 4
    return below, below if below == side else below + 4


def check_size(height: int, width: int) -> None:
    """Raise ``ValueError`` unless both sides are 1 (mod 4) and >= 5 pixels."""
    for name, side in (("height", height), ("width", width)):
        if side < 5 or side % 4 != 1:
            lo, hi = nearest_valid_sizes(side)
            near = f"{lo}" if lo == hi else f"{lo} or {hi}"
            raise ValueError(
                f"input {name} {side} px: the autoencoder needs sides of 4k+1 pixels so the "
                f"encoding decodes back to the same size (nearest valid: {near})"
            )


def _check_batch(x: torch.Tensor, channels: int = 3, name: str = "x") -> None:
    """The one input check of everything that encodes (the model, :class:`aeutils.losses.EncodingLoss`,
    :func:`aeutils.encoding.encode_batch`): ``x`` must be an Nx(channels)xHxW float tensor (RGB in
    [0, 1]). Not a tensor or an integer dtype (uint8 0-255): ``TypeError`` naming the conversion
    ``x.float() / 255``; another shape: ``ValueError``. ``name`` is how messages call ``x``.
    Sides are not checked here (:func:`check_size` is the decoding rule)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} has dtype {x.dtype}: expected float RGB in [0, 1] (float16, bfloat16, float32 or "
            f"float64); convert 0-255 integers with {name}.float() / 255"
        )
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"expected {name} as an Nx{channels}xHxW RGB batch in [0, 1], got shape {tuple(x.shape)}")


class ResidualBlock(nn.Module):
    """x + BN(conv(act(BN(conv(x))))): same channels, stride 1, padding 1. ``transposed`` uses
    ``ConvTranspose2d`` (the decoder's blocks)."""

    def __init__(self, channels: int, act: Callable[[], nn.Module], transposed: bool = False) -> None:
        super().__init__()
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.body = nn.Sequential(
            conv(channels, channels, 3, stride=1, padding=1),
            nn.BatchNorm2d(channels),
            act(),
            conv(channels, channels, 3, stride=1, padding=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _stage(
    head: nn.Module, channels: int, n_blocks: int, act: Callable[[], nn.Module], head_act: bool, transposed: bool
) -> nn.Sequential:
    layers: list[nn.Module] = [head]
    if head_act:
        layers.append(act())
    layers += [ResidualBlock(channels, act, transposed) for _ in range(n_blocks)]
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """The autoencoder. Inputs and outputs are RGB float tensors in [0, 1], shape Nx3xHxW with
    H, W = 1 (mod 4); the encoding is Nx(latent_channels)x((H+3)/4)x((W+3)/4), unbounded floats.

    ``encoder`` is an ``nn.ModuleList`` of the four stages, each ending at a tap of :data:`TAPS`, ``decoder``
    an ``nn.Sequential``. In eval mode the decoded image is clamped to [0, 1]; in train mode it is
    not (so the loss sees, and corrects, overshoot).
    """

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or AutoencoderConfig()
        act = ACTIVATIONS[config.activation]
        w1, w2, w3 = config.widths
        n, r, z, c = config.n_blocks, config.stage_activation, config.latent_channels, config.in_channels
        self.encoder = nn.ModuleList(
            [
                _stage(nn.Conv2d(c, w1, 3, stride=2, padding=1), w1, n, act, r, False),  # 181x181 -> 91x91
                _stage(nn.Conv2d(w1, w2, 3, stride=2, padding=1), w2, n, act, r, False),  # 91x91 -> 46x46
                _stage(nn.Conv2d(w2, w3, 3, stride=1, padding=1), w3, n, act, r, False),  # 46x46 -> 46x46
                nn.Conv2d(w3, z, 3, stride=1, padding=1),  # 46x46 -> 46x46, linear latent
            ]
        )
        self.decoder = nn.Sequential(
            _stage(nn.ConvTranspose2d(z, w3, 3, stride=1, padding=1), w3, n, act, r, True),  # 46 -> 46
            _stage(nn.ConvTranspose2d(w3, w2, 3, stride=1, padding=1), w2, n, act, r, True),  # 46 -> 46
            _stage(nn.ConvTranspose2d(w2, w1, 3, stride=2, padding=1), w1, n, act, r, True),  # 46 -> 91
            nn.ConvTranspose2d(w1, c, 3, stride=2, padding=1),  # 91x91 -> 181x181, linear output
        )
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, c, 1, 1), persistent=False)

    def _check_input(self, x: torch.Tensor) -> None:
        """:func:`_check_batch`, then the 4k+1 rule of :func:`check_size` (inputs that are decoded)."""
        _check_batch(x, self.config.in_channels)
        check_size(x.shape[-2], x.shape[-1])

    def encoder_forward(
        self, x: torch.Tensor, taps: tuple[str, ...] | list[str] = (), *, stop_after: str | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One encoder pass over an input of **any** size: ``(latent, {tap: activation})``.

        The one place "normalise, then run the stages" is written (:func:`_encoder_pass`):
        :meth:`encode`, :meth:`encode_features`, :class:`Encoder` (what
        :class:`aeutils.losses.EncodingLoss` holds) and :mod:`aeutils.slidemap` all run it. ``x``:
        Nx3xHxW RGB in [0, 1], H, W >= 1 pixels (no 4k+1 rule: the encoder is fully convolutional;
        latent side ``ceil(ceil(H/2)/2)``, latent pixel ``j`` centred on input pixel ``4j``), computed in
        ``x``'s dtype. ``taps``: names from :data:`TAPS` whose activations are also returned (stage1
        Nx(widths[0])x(H/2)x(W/2), stage2 Nx(widths[1]) and stage3 Nx(widths[2]) at H/4, latent
        Nx(latent_channels)x(H/4)x(W/4), sides rounded up). ``stop_after``: a tap from :data:`TAPS`; the
        deeper stages are not run and the first value returned is that tap's activation instead of the
        latent (a loss that only needs stage1 pays for stage1 only).
        """
        return _encoder_pass(self.encoder, self.mean, self.std, self.config.in_channels, x, taps, stop_after)

    def encode_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The activations at every tap (the end of each encoder stage, and the latent), keyed by :data:`TAPS`.

        ``x``: Nx3xHxW RGB in [0, 1], H, W = 1 (mod 4). Stage widths come from ``config.widths``
        (``(w1, w2, w3)``): stage1 Nx(w1)x((H+1)/2)x((W+1)/2), stage2 Nx(w2) and stage3 Nx(w3) at
        ((H+3)/4)x((W+3)/4), latent Nx(latent_channels) at the same size. For H = W = 181 and the
        shipped model (widths 32, 32, 8): stage1 Nx32x91x91, stage2 Nx32x46x46, stage3 Nx8x46x46,
        latent Nx1x46x46 (the default config's stage1 is 64 wide).
        """
        self._check_input(x)
        return self.encoder_forward(x, TAPS)[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Nx3xHxW RGB in [0, 1] (H, W = 1 mod 4, so it decodes back) ->
        Nx(latent_channels)x((H+3)/4)x((W+3)/4) encoding. Any other size: :meth:`encoder_forward`."""
        self._check_input(x)
        return self.encoder_forward(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Nx(latent_channels)xhxw encoding -> Nx3x(4h-3)x(4w-3) RGB (clamped to [0, 1] in eval mode)."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected an Nx{self.config.latent_channels}xhxw encoding, got shape {tuple(z.shape)}")
        y = self.decoder(z) * self.std.to(z.dtype) + self.mean.to(z.dtype)
        return y if self.training else y.clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x``: same shape, RGB in [0, 1]."""
        return self.decode(self.encode(x))


def _encoder_pass(
    stages: nn.ModuleList, mean: torch.Tensor, std: torch.Tensor, channels: int, x: torch.Tensor,
    taps: tuple[str, ...] | list[str] = (), stop_after: str | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The encoder loop, written once: check ``x``, normalise with ``mean``/``std``, run ``stages`` up to
    ``stop_after``, keep the activations at ``taps`` (see :meth:`Autoencoder.encoder_forward`)."""
    _check_batch(x, channels)
    unknown = [t for t in (*taps, *([] if stop_after is None else [stop_after])) if t not in TAPS]
    if unknown:
        raise ValueError(f"unknown encoder taps {unknown}: choose from {', '.join(TAPS)}")
    depth = len(TAPS) if stop_after is None else TAPS.index(stop_after) + 1
    h = (x - mean.to(x.dtype)) / std.to(x.dtype)
    out: dict[str, torch.Tensor] = {}
    for name, stage in zip(TAPS[:depth], stages):
        h = stage(h)
        if name in taps:
            out[name] = h
    return h, out


class Encoder(nn.Module):
    """The encoder half of an :class:`Autoencoder` on its own: a copy of its stages (``encoder``, the same
    ``nn.ModuleList`` layout and state-dict keys) and its input normalisation, **no decoder**. What a
    loss holds (:class:`aeutils.losses.EncodingLoss`): half the weights of the whole model in memory.

    ``Encoder(model)`` copies ``model``'s encoder (the model is not modified); call it as
    :meth:`Autoencoder.encoder_forward`: ``latent, taps = enc(x, taps=(), stop_after=None)``, ``x``
    Nx3xHxW RGB in [0, 1], any H, W >= 1.
    """

    def __init__(self, model: "Autoencoder") -> None:
        super().__init__()
        import copy

        self.config = model.config
        self.encoder = copy.deepcopy(model.encoder)
        self.register_buffer("mean", model.mean.detach().clone(), persistent=False)
        self.register_buffer("std", model.std.detach().clone(), persistent=False)

    def forward(
        self, x: torch.Tensor, taps: tuple[str, ...] | list[str] = (), *, stop_after: str | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(latent, {tap: activation})``, as :meth:`Autoencoder.encoder_forward`."""
        return _encoder_pass(self.encoder, self.mean, self.std, self.config.in_channels, x, taps, stop_after)

    encoder_forward = forward

    def extra_repr(self) -> str:
        c = self.config
        return f"widths={c.widths}, latent_channels={c.latent_channels}, n_blocks={c.n_blocks}, activation={c.activation!r}"


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
