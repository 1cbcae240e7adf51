"""The SRGAN training config: :class:`SRConfig`, every knob of :func:`aeutils.sr.train.train_srgan`, checked
once when made (one-line :class:`~aeutils.errors.TrainingError` named by the CLI option), saved as
``RUN/config.json``. The same object the CLI builds from its flags."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from aeutils.errors import TrainingError
from aeutils.sr.arch import PRESETS, GeneratorConfig
from aeutils.training.config import parse_duration

__all__ = ["SRConfig", "CONTENT_LOSSES", "JUDGE_CHOICES", "SR_RUNTIME_FIELDS"]

#: content losses by name: the histology encoder, its random-weights control, the ImageNet arms of the SR
#: bench (EfficientNet-Lite0, VGG16 with the ``[baselines]`` extra, VGG19 from a user file), none
CONTENT_LOSSES = ("encoding", "random", "imagenet", "vgg16", "vgg19", "none")
#: validation judges best.pt may be chosen by (:class:`aeutils.metrics.judges.Judges`)
JUDGE_CHOICES = ("stlpips", "haarpsi", "psnr", "ssim", "ssim_h")
#: fields that say how long / where / how loudly a run goes, not what it trains
SR_RUNTIME_FIELDS = ("resume", "device", "max_steps", "time_budget", "progress", "verbose", "val_every", "threads")


@dataclass(frozen=True)
class SRConfig:
    """Every knob of an SRGAN run.

    Args:
        preset: generator / discriminator size: ``"paper"`` (16 blocks x 64 channels, D from 64),
            ``"cpu"`` (6 x 32, D from 32), ``"tiny"``, or ``"auto"`` (paper on CUDA, cpu elsewhere).
        n_blocks, channels, d_channels: override the preset's numbers.
        hr_size: HR training crop side (px, a multiple of 4); LR inputs are made from it on the fly by
            :func:`aeutils.sr.degrade.downscale` (antialiased bicubic x4). Patches must be larger than it.
        batch_size: per process. pretrain_steps: pixel-loss (MSE) steps; gan_steps: then the GAN phase.
        pretrain_lr, lr: Adam learning rates of the two phases (G and D share ``lr``; it drops 10x at
            half the GAN phase, as SRGAN's).
        pixel: MSE weight. content: the content loss by name (:data:`CONTENT_LOSSES`); content_weight:
            its weight, None: matched (the content term equals pixel MSE on bicubic upsamples of the first
            validation patches, :func:`aeutils.sr.bench.matched_weight`; stored in the checkpoints).
        adversarial: the adversarial term's weight (SRGAN's 1e-3).
        encoder_checkpoint: the autoencoder for ``content="encoding"``/"random" (default: the shipped one).
        vgg19_weights: torchvision's VGG19 weights file for ``content="vgg19"``.
        init: a generator checkpoint (e.g. another run's ``pixel.pt``) the generator starts from instead
            of its random initialisation; with ``pretrain_steps=0``, several GAN runs share one pixel
            pretraining (its generator size must be this run's).
        select: the validation judge best.pt is chosen by (:data:`JUDGE_CHOICES`; ST-LPIPS lower is
            better, the others higher); pixel.pt keeps the best-PSNR generator of the pretraining phase.
        val_every: validate (and write last.pt) every N steps, and at each phase's end and at a stop.
        val_limit: validation patches used (evenly spaced; None: all).
        seed, device, max_steps, time_budget, resume, channels_last, amp, progress, verbose: as
            :class:`aeutils.training.TrainConfig`'s. threads: ``torch.set_num_threads`` (None: leave).
    """

    preset: str = "auto"
    n_blocks: int | None = None
    channels: int | None = None
    d_channels: int | None = None
    hr_size: int = 96
    batch_size: int = 16
    pretrain_steps: int = 1000
    gan_steps: int = 1000
    pretrain_lr: float = 5e-4
    lr: float = 1e-4
    pixel: float = 1.0
    content: str = "encoding"
    content_weight: float | None = None
    adversarial: float = 1e-3
    encoder_checkpoint: str | None = None
    vgg19_weights: str | None = None
    init: str | None = None
    select: str = "stlpips"
    val_every: int = 100
    val_limit: int | None = 32
    seed: int = 0
    device: str | None = None
    max_steps: int | None = None
    time_budget: float | None = None
    resume: bool | str = "auto"
    channels_last: bool | None = None
    amp: bool | None = None
    progress: bool = True
    verbose: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen: normalise once
        if isinstance(self.time_budget, str):
            set_("time_budget", parse_duration(self.time_budget))
        for k in ("encoder_checkpoint", "vgg19_weights", "init"):
            if isinstance(getattr(self, k), os.PathLike):
                set_(k, os.fspath(getattr(self, k)))
        if self.val_limit == 0:
            set_("val_limit", None)
        if self.preset not in (*PRESETS, "auto"):
            raise TrainingError(f"--preset {self.preset!r}: choose from {', '.join((*PRESETS, 'auto'))}")
        if self.content not in CONTENT_LOSSES:
            raise TrainingError(f"--content {self.content!r}: choose from {', '.join(CONTENT_LOSSES)}")
        if self.select not in JUDGE_CHOICES:
            raise TrainingError(f"--select {self.select!r}: choose from {', '.join(JUDGE_CHOICES)}")
        if self.content == "vgg19" and not self.vgg19_weights:
            raise TrainingError("--content vgg19 needs --vgg19-weights FILE (torchvision's vgg19-dcbb9e9d.pth)")
        if self.resume not in (True, False, "auto"):
            raise TrainingError(f"resume {self.resume!r}: must be True, False or 'auto'")
        for flag, v, low in (("--n-blocks", self.n_blocks, 1), ("--channels", self.channels, 1),
                             ("--d-channels", self.d_channels, 1), ("--hr-size", self.hr_size, 16),
                             ("--batch-size", self.batch_size, 1), ("--pretrain-steps", self.pretrain_steps, 0),
                             ("--gan-steps", self.gan_steps, 0), ("--val-every", self.val_every, 1),
                             ("--val-limit", self.val_limit, 1), ("--seed", self.seed, 0),
                             ("--max-steps", self.max_steps, 1), ("--threads", self.threads, 1)):
            if v is None and flag not in ("--hr-size", "--batch-size", "--pretrain-steps", "--gan-steps",
                                          "--val-every", "--seed"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise TrainingError(f"{flag} {v!r}: expected an integer >= {low}")
        if self.hr_size % 4:
            raise TrainingError(f"--hr-size {self.hr_size}: must be a multiple of 4 (the LR side is a quarter)")
        if self.pretrain_steps + self.gan_steps < 1:
            raise TrainingError("--pretrain-steps + --gan-steps must be >= 1")
        for flag, f, strict in (("--pretrain-lr", self.pretrain_lr, True), ("--lr", self.lr, True),
                                ("--pixel", self.pixel, False), ("--content-weight", self.content_weight, False),
                                ("--adversarial", self.adversarial, False)):
            if f is None:
                continue
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f < 0 or (strict and f == 0):
                raise TrainingError(f"{flag} {f!r}: expected a number {'> 0' if strict else '>= 0'}")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise TrainingError(f"--time-budget {self.time_budget!r}: must be > 0 seconds")

    @property
    def total_steps(self) -> int:
        return self.pretrain_steps + self.gan_steps

    def sizes(self, device_type: str) -> tuple[GeneratorConfig, int]:
        """(generator config, discriminator base channels) of this preset and overrides on ``device_type``."""
        name = ("paper" if device_type == "cuda" else "cpu") if self.preset == "auto" else self.preset
        g, d = PRESETS[name]
        g = GeneratorConfig(self.n_blocks or g.n_blocks, self.channels or g.channels, g.bicubic_skip)
        return g, self.d_channels or d

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SRConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise TrainingError(f"unknown SR training settings {unknown}")
        return cls(**data)

    def recipe(self) -> dict[str, Any]:
        """What the run trains (all but :data:`SR_RUNTIME_FIELDS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in SR_RUNTIME_FIELDS}

    def differences(self, other: "SRConfig") -> list[str]:
        """``"key old -> new"`` for each recipe setting of ``other`` that differs from this one."""
        a, b = self.recipe(), other.recipe()
        return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in b if a.get(k) != b.get(k)]

    def replace(self, **changes: Any) -> "SRConfig":
        return replace(self, **changes)
