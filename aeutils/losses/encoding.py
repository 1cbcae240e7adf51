"""The encoder as a histology perceptual loss (:class:`EncodingLoss`). The ImageNet baselines it
replaces live in :mod:`aeutils.losses.imagenet`; the evidence for it in :mod:`aeutils.sensitivity`
and :mod:`aeutils.sr.bench`.

Super-resolution networks for H&E slides are usually scored with VGG19 features trained on ImageNet
photographs. :class:`EncodingLoss` compares images through the frozen encoder of an autoencoder trained on
H&E patches instead: same call convention (``loss = L(pred, target)``, RGB in [0, 1], Nx3xHxW, scalar out).

"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from aeutils import speed as _speed
from aeutils.errors import CheckpointError
from aeutils.losses.common import (
    CRITERIA, INSTANCE_EPS, _check_criterion, _check_pair, _fuse_conv_bn, _Frozen, _instance_norm, _pointwise,
)
from aeutils.model import TAPS, Autoencoder, Encoder, _check_batch

#: default tap weights: stage1 (1/2 resolution) is the most detail-sensitive tap and the deeper
#: ones mostly add colour/brightness response (``bench/loss_sensitivity.py``, notebook 05); stopping
#: after stage1 also makes the loss cheaper
DEFAULT_TAP_WEIGHTS: dict[str, float] = {"stage1": 1.0, "stage2": 0.0, "stage3": 0.0, "latent": 0.0}
#: default feature normalisation: per-image, per-channel standardisation ("instance") removed most of
#: the brightness/stain response for trained and random encoders alike in the sensitivity bench
DEFAULT_NORMALIZE = "instance"
#: smallest side :class:`EncodingLoss` takes (pixels): its 1/4-resolution taps are then 4x4, enough
#: pixels for the per-image statistics of ``normalize="instance"``
MIN_SIDE = 16

#: deprecated module names -> current ones (still importable, with a ``DeprecationWarning``)
_DEPRECATED = {"DEFAULT_LAYER_WEIGHTS": "DEFAULT_TAP_WEIGHTS"}


def __getattr__(name: str) -> Any:
    """``DEFAULT_LAYER_WEIGHTS``: the old name of :data:`DEFAULT_TAP_WEIGHTS` (``DeprecationWarning``)."""
    if name in _DEPRECATED:
        warnings.warn(f"aeutils.losses.encoding.{name} is deprecated: use {_DEPRECATED[name]}", DeprecationWarning,
                      stacklevel=2)
        return globals()[_DEPRECATED[name]]
    raise AttributeError(f"module 'aeutils.losses.encoding' has no attribute {name!r}")


def _shifted_copies(x: torch.Tensor, s: int) -> torch.Tensor:
    """The (2s+1)^2 copies of ``x`` (NxCxHxW) shifted by -s..s pixels in y and x, edges replicated,
    concatenated offset by offset: ((2s+1)^2 N)xCxHxW, copy ``k`` of image ``i`` at row ``k * N + i``."""
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (s, s, s, s), mode="replicate")
    return torch.cat([padded[..., dy:dy + h, dx:dx + w] for dy in range(2 * s + 1) for dx in range(2 * s + 1)])


class EncodingLoss(_Frozen):
    """Perceptual loss through the frozen encoder of an mscopy-AE autoencoder.

    ``loss = EncodingLoss()(pred, target)``: ``pred`` and ``target`` are Nx3xHxW RGB in [0, 1], any
    H, W >= :data:`MIN_SIDE` (16) pixels (64, 128, 192, 256, 181, ...: the loss only encodes, so the
    decoder's 4k+1 rule does not apply; same rule as :meth:`aeutils.model.Autoencoder.encoder_forward`),
    float16, bfloat16, float32 or float64 (computed in float32; the gradient comes back in the input's
    dtype), inside or outside ``torch.autocast``. Integer input (uint8 0-255) raises ``TypeError``:
    convert with ``x.float() / 255``. NaN or infinite values raise ``ValueError`` naming the input. The
    result is a float32 scalar: ``weight * sum_k tap_weights[k] * mean(|f_k(pred) - f_k(target)|)``
    (``criterion="l2"``: squared) over the taps ``k`` of :data:`aeutils.model.TAPS`, ``("stage1",
    "stage2", "stage3", "latent")``: the points where the encoder's activations are read (the ends of
    its residual stages at 1/2 and 1/4 resolution, and the 1-channel latent).

    Args:
        model: an :class:`~aeutils.model.Autoencoder`; default: the shipped model
            (:func:`aeutils.checkpoint.load_model` ``()``), unless ``checkpoint`` is given.
        checkpoint: path of an mscopy-AE checkpoint to use instead.
        tap_weights: tap name -> weight; missing taps weigh 0. Default :data:`DEFAULT_TAP_WEIGHTS`
            (stage1 only). ``layer_weights``: its deprecated old name (``DeprecationWarning``).
        criterion: ``"l1"`` or ``"l2"``.
        weight: overall factor.
        normalize: ``False``/``"none"``; ``True``/``"channel"``: divide each channel of each tap by
            that channel's standard deviation over the target batch (detached), so every channel
            counts alike whatever its activation scale; ``"instance"``: standardise each channel of
            each image over its pixels (pred and target separately), so a per-channel offset or gain
            (what a global brightness or stain change mostly causes) costs nothing; pair it with a
            pixel term that keeps colours right. Default :data:`DEFAULT_NORMALIZE` (``"instance"``).
        reduction: ``"mean"`` (scalar) or ``"none"`` (one value per image, shape N).
        pool: 0 (default: off) or an odd kernel side k >= 3 (tap pixels): blur each tap's (normalised)
            features of pred and target alike with a k x k stride-1 average (edges: the mean of the
            pixels inside) before comparing, so a misalignment of a pixel or two (what SR outputs always
            have) costs less relative to lost detail (``bench/shift_tolerant.py`` measures it).
        shift: 0 (default: off) or s >= 1 (input pixels): the loss of each image is the smallest over
            the (2s+1)^2 copies of the target shifted by -s..s pixels in y and x (edges replicated), so a
            misalignment of up to s pixels costs (almost) nothing; the target is encoded (2s+1)^2 times
            (without gradient), pred once.
        fuse: fold BatchNorm into the preceding convolutions of the (copied) encoder: same values,
            faster. The model passed in is never modified; the loss keeps a copy of its encoder only
            (:class:`aeutils.model.Encoder`, no decoder).
        speed: how the encoder runs: None (default) decides per input shape with
            :func:`aeutils.speed.inference_choice` (fp32 until this shape has been seen often enough for
            a probe to pay, then the measured fastest of fp32 / channels_last / bf16 autocast / both,
            cached per process), or a candidate name of :data:`aeutils.speed.CANDIDATES` to force one
            (``$MSCOPY_CPU_SPEED`` forces one for every caller). Features are compared in float32.

    Frozen: eval mode always (``train()`` is a no-op), no trainable parameters, target features are
    computed under ``torch.no_grad()``; gradients flow to ``pred`` only.

    BasicSR-style use (its SR models call ``cri_perceptual(output, gt)`` and expect a
    ``(perceptual, style)`` pair); put this in a module imported before the model is built::

        from basicsr.utils.registry import LOSS_REGISTRY
        from aeutils.losses import EncodingLoss   # BasicSR moves the loss with the model (.to(device))

        @LOSS_REGISTRY.register()
        class HistoEncodingLoss(EncodingLoss):
            def __init__(self, perceptual_weight=1.0, criterion="l1", checkpoint=None):
                super().__init__(checkpoint=checkpoint, criterion=criterion, weight=perceptual_weight)

            def forward(self, x, gt):
                return super().forward(x.clamp(0, 1), gt), None

    and in the options YAML (train section), instead of ``PerceptualLoss``::

        perceptual_opt:
          type: HistoEncodingLoss
          perceptual_weight: 1.0
          criterion: l1
    """

    def __init__(
        self,
        model: Autoencoder | None = None,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        tap_weights: Mapping[str, float] | None = None,
        criterion: str = "l1",
        weight: float = 1.0,
        normalize: bool | str = DEFAULT_NORMALIZE,
        reduction: str = "mean",
        pool: int = 0,
        shift: int = 0,
        fuse: bool = True,
        speed: str | None = None,
        layer_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if layer_weights is not None:
            if tap_weights is not None:
                raise ValueError("give tap_weights= only (layer_weights= is its deprecated old name)")
            warnings.warn("EncodingLoss(layer_weights=...) is deprecated: use tap_weights=", DeprecationWarning,
                          stacklevel=2)
            tap_weights = layer_weights
        if speed is not None and speed not in _speed.CANDIDATES:
            raise ValueError(f"speed must be None or one of {_speed.CANDIDATES}, got {speed!r}")
        self.speed = speed
        if model is not None and checkpoint is not None:
            raise ValueError("give either model= or checkpoint=, not both")
        if model is None:
            from aeutils.checkpoint import load_model, pretrained_path

            source = Path(checkpoint) if checkpoint is not None else pretrained_path()
            model = load_model(source)
        else:
            source = None
        #: the checkpoint file the encoder came from (None: a model object was given)
        self.checkpoint: Path | None = source
        inner = getattr(getattr(model, "module", model), "_orig_mod", getattr(model, "module", model))
        if not isinstance(inner, Autoencoder):
            raise TypeError(f"model must be an aeutils Autoencoder, got {type(inner).__name__}")
        tw = dict(DEFAULT_TAP_WEIGHTS if tap_weights is None else tap_weights)
        unknown = sorted(set(tw) - set(TAPS))
        if unknown:
            raise ValueError(f"unknown tap_weights taps {unknown}; taps are {list(TAPS)}")
        self.tap_weights = {k: float(tw.get(k, 0.0)) for k in TAPS}
        if not any(self.tap_weights.values()):
            raise ValueError("tap_weights: at least one tap needs a non-zero weight")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        _check_criterion(criterion)
        if isinstance(pool, bool) or not isinstance(pool, int) or not (pool == 0 or (pool >= 3 and pool % 2)):
            raise ValueError(f"pool must be 0 (off) or an odd int >= 3, got {pool!r}")
        #: side of the average blur of each tap's features before comparing (0: none)
        self.pool = pool
        if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
            raise ValueError(f"shift must be an int >= 0, got {shift!r}")
        #: the largest target shift (input pixels) the loss minimises over (0: none)
        self.shift = shift
        modes = {False: "none", True: "channel", "none": "none", "channel": "channel", "instance": "instance"}
        if normalize not in modes:
            raise ValueError(f"normalize must be one of False, True, 'none', 'channel', 'instance', got {normalize!r}")
        self.criterion, self.weight, self.normalize, self.reduction = criterion, float(weight), modes[normalize], reduction
        #: a float32 eval-mode copy of the model's encoder, no decoder (BatchNorms folded when ``fuse``);
        #: the loss encodes with the model's own pass (:meth:`~aeutils.model.Autoencoder.encoder_forward`)
        self.encoder = Encoder(inner).float().eval()
        self.fused = bool(fuse)
        if fuse:
            _fuse_conv_bn(self.encoder.encoder)
        #: the deepest tap with a non-zero weight: the encoder stops there in forward()
        self._stop_after = max((k for k in TAPS if self.tap_weights[k]), key=TAPS.index)
        self._freeze()

    @property
    def layer_weights(self) -> dict[str, float]:
        """Deprecated old name of :attr:`tap_weights` (``DeprecationWarning``)."""
        warnings.warn("EncodingLoss.layer_weights is deprecated: use tap_weights", DeprecationWarning, stacklevel=2)
        return self.tap_weights

    def extra_repr(self) -> str:
        """What the loss computes, on one line: where its encoder came from, the taps read (non-zero
        weights only), criterion, normalisation and weight."""
        c = self.encoder.config
        source = "a given model" if self.checkpoint is None else repr(str(self.checkpoint))
        taps = {k: w for k, w in self.tap_weights.items() if w}
        return (f"checkpoint={source} (widths {'-'.join(map(str, c.widths))}, latent {c.latent_channels}), "
                f"taps={taps}, criterion={self.criterion!r}, normalize={self.normalize!r}, weight={self.weight}"
                + (f", pool={self.pool}" if self.pool else "") + (f", shift={self.shift}" if self.shift else ""))

    def __repr__(self) -> str:
        """``EncodingLoss(checkpoint=..., taps=..., criterion=..., normalize=..., weight=...)``: one line, not
        the encoder's module tree (``loss.encoder`` prints that)."""
        return f"{type(self).__name__}({self.extra_repr()})"

    def _taps(self, x: torch.Tensor, stop_after: str) -> dict[str, torch.Tensor]:
        """The taps up to ``stop_after`` of ``x`` (checked here, encoded in float32 by the model's own pass)."""
        _check_batch(x)  # before .float(): integer input must be refused, not cast
        if min(x.shape[-2:]) < MIN_SIDE:
            raise ValueError(f"EncodingLoss needs sides of at least {MIN_SIDE} px, got {tuple(x.shape[-2:])}")
        taps = TAPS[: TAPS.index(stop_after) + 1]
        return self.encoder(x.float(), taps, stop_after=stop_after)[1]

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The activations at all four taps of ``x`` (Nx3xHxW RGB in [0, 1], any H, W >= 16), keyed by
        :data:`aeutils.model.TAPS`; for H = W = 128: stage1 NxC1x64x64, stage2/stage3 at 32x32,
        latent Nx1x32x32 (sides ``ceil(H/2)``, ``ceil(H/4)``). Differentiable w.r.t. ``x``."""
        return self._taps(x, TAPS[-1])

    def compare(self, pred_feats: Mapping[str, torch.Tensor], target_feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss per image (shape N, before ``weight``) from two feature dicts of :meth:`features`."""
        total: torch.Tensor | None = None
        for name, w in self.tap_weights.items():
            if not w:
                continue
            a, b = pred_feats[name], target_feats[name]
            if self.normalize == "channel":
                scale = b.detach().std(dim=(0, 2, 3), keepdim=True) + 1e-4
                a, b = a / scale, b / scale
            elif self.normalize == "instance":
                a, b = _instance_norm(a), _instance_norm(b)
            if self.pool:
                a, b = self._blur(a), self._blur(b)
            term = w * self._weigh_channels(name, _pointwise(self.criterion, a, b)).flatten(1).mean(1)
            total = term if total is None else total + term
        assert total is not None
        return total

    def _weigh_channels(self, tap: str, d: torch.Tensor) -> torch.Tensor:
        """The pointwise distance ``d`` (NxCxhxw) at ``tap``, weighted per channel: as it is here (every channel
        counts alike); :class:`aeutils.losses.calibrated.CalibratedEncodingLoss` applies its fitted weights."""
        return d

    def _blur(self, a: torch.Tensor) -> torch.Tensor:
        """``a`` (NxCxhxw) averaged over :attr:`pool` x :attr:`pool` windows, stride 1, same shape."""
        return torch.nn.functional.avg_pool2d(a, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)

    def speed_choice(self, pred: torch.Tensor) -> "_speed.Choice":
        """How a call on a batch shaped like ``pred`` runs (:func:`aeutils.speed.inference_choice`,
        timing this loss's own computation, with a backward pass to ``pred`` when it needs gradients)."""
        backward = torch.is_grad_enabled() and pred.requires_grad
        return _speed.inference_choice(
            self, tuple(pred.shape), pred.device, backward=backward, force=self.speed,
            run=lambda x, c: self._per_image(x, x, c),
        )

    def _per_image(self, pred: torch.Tensor, target: torch.Tensor, choice: "_speed.Choice") -> torch.Tensor:
        target = target.detach()
        copies = 1
        if self.shift:
            target = _shifted_copies(target, self.shift)
            copies = len(target) // len(pred)
        with _speed.running(choice, pred.device):
            with torch.no_grad():
                target_feats = self._taps(_speed.prepare(target, choice), self._stop_after)
            pred_feats = self._taps(_speed.prepare(pred, choice), self._stop_after)
        as_float = lambda f, n=1: {k: v.float().repeat(n, 1, 1, 1) for k, v in f.items()}  # noqa: E731
        with torch.autocast(pred.device.type, enabled=False):  # the comparison stays float32
            per_copy = self.compare(as_float(pred_feats, copies), as_float(target_feats))
            return per_copy.view(copies, len(pred)).amin(0) * self.weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss (or per-image, ``reduction="none"``) between ``pred`` and ``target``."""
        _check_pair(pred, target)
        per_image = self._per_image(pred, target, self.speed_choice(pred))
        return per_image.mean() if self.reduction == "mean" else per_image
