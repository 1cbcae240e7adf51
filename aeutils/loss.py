"""The encoder as a histology perceptual loss (:class:`EncodingLoss`), the ImageNet-VGG19 baseline it
replaces (:class:`VGGContentLoss`). The evidence for it lives in :mod:`aeutils.sensitivity`.

Super-resolution networks for H&E slides are usually scored with VGG19 features trained on ImageNet
photographs. :class:`EncodingLoss` compares images through the frozen encoder of an autoencoder trained on
H&E patches instead: same call convention (``loss = L(pred, target)``, RGB in [0, 1], Nx3xHxW, scalar out).

"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from aeutils import speed as _speed
from aeutils.errors import CheckpointError
from aeutils.model import STAGES, Autoencoder, _check_batch

#: default tap weights: the first stage (1/2 resolution) is the most detail-sensitive tap and the deeper
#: ones mostly add colour/brightness response (``bench/loss_sensitivity.py``, notebook 05); stopping
#: after stage1 also makes the loss cheaper
DEFAULT_LAYER_WEIGHTS: dict[str, float] = {"stage1": 1.0, "stage2": 0.0, "stage3": 0.0, "latent": 0.0}
#: default feature normalisation: per-image, per-channel standardisation ("instance") removed most of
#: the brightness/stain response for trained and random encoders alike in the sensitivity bench
DEFAULT_NORMALIZE = "instance"
CRITERIA = ("l1", "l2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: VGG19 ``features[:12]`` ends at relu3_1, the layer the original SRGAN code used
VGG_LAYERS = 12
#: smallest side :class:`EncodingLoss` takes (pixels): its 1/4-resolution taps are then 4x4, enough
#: pixels for the per-image statistics of ``normalize="instance"``
MIN_SIDE = 16
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
    ``TypeError``, other shape -> ``ValueError``), of one shape."""
    _check_batch(pred, name="pred")
    _check_batch(target, name="target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")


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


class EncodingLoss(_Frozen):
    """Perceptual loss through the frozen encoder of an mscopy-AE autoencoder.

    ``loss = EncodingLoss()(pred, target)``: ``pred`` and ``target`` are Nx3xHxW RGB in [0, 1], any
    H, W >= :data:`MIN_SIDE` (16) pixels (64, 128, 192, 256, 181, ...: the loss only encodes, so the
    decoder's 4k+1 rule does not apply; same rule as :meth:`aeutils.model.Autoencoder.encoder_forward`),
    float16, bfloat16, float32 or float64 (computed in float32; the gradient comes back in the input's
    dtype), inside or outside ``torch.autocast``. Integer input (uint8 0-255) raises ``TypeError``:
    convert with ``x.float() / 255``. The result is a float32 scalar: ``weight * sum_k layer_weights[k] * mean(|f_k(pred) - f_k(target)|)``
    (``criterion="l2"``: squared) over the taps ``k`` in ``("stage1", "stage2", "stage3", "latent")``
    (ends of the encoder's residual stages at 1/2 and 1/4 resolution, and the 1-channel latent).

    Args:
        model: an :class:`~aeutils.model.Autoencoder`; default: the shipped model
            (:func:`aeutils.checkpoint.load_pretrained`), unless ``checkpoint`` is given.
        checkpoint: path of an mscopy-AE checkpoint to use instead.
        layer_weights: tap name -> weight; missing taps weigh 0. Default :data:`DEFAULT_LAYER_WEIGHTS`
            (stage1 only).
        criterion: ``"l1"`` or ``"l2"``.
        weight: overall factor.
        normalize: ``False``/``"none"``; ``True``/``"channel"``: divide each channel of each tap by
            that channel's standard deviation over the target batch (detached), so every channel
            counts alike whatever its activation scale; ``"instance"``: standardise each channel of
            each image over its pixels (pred and target separately), so a per-channel offset or gain
            (what a global brightness or stain change mostly causes) costs nothing; pair it with a
            pixel term that keeps colours right. Default :data:`DEFAULT_NORMALIZE` (``"instance"``).
        reduction: ``"mean"`` (scalar) or ``"none"`` (one value per image, shape N).
        fuse: fold BatchNorm into the preceding convolutions of the (copied) encoder: same values,
            faster. The model passed in is never modified.
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
        from aeutils.loss import EncodingLoss   # BasicSR moves the loss with the model (.to(device))

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
        layer_weights: Mapping[str, float] | None = None,
        criterion: str = "l1",
        weight: float = 1.0,
        normalize: bool | str = DEFAULT_NORMALIZE,
        reduction: str = "mean",
        fuse: bool = True,
        speed: str | None = None,
    ) -> None:
        super().__init__()
        if speed is not None and speed not in _speed.CANDIDATES:
            raise ValueError(f"speed must be None or one of {_speed.CANDIDATES}, got {speed!r}")
        self.speed = speed
        if model is not None and checkpoint is not None:
            raise ValueError("give either model= or checkpoint=, not both")
        if model is None:
            from aeutils.checkpoint import as_model

            model = as_model(checkpoint)
        inner = getattr(getattr(model, "module", model), "_orig_mod", getattr(model, "module", model))
        if not isinstance(inner, Autoencoder):
            raise TypeError(f"model must be an aeutils Autoencoder, got {type(inner).__name__}")
        lw = dict(DEFAULT_LAYER_WEIGHTS if layer_weights is None else layer_weights)
        unknown = sorted(set(lw) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown layer_weights taps {unknown}; taps are {list(STAGES)}")
        self.layer_weights = {k: float(lw.get(k, 0.0)) for k in STAGES}
        if not any(self.layer_weights.values()):
            raise ValueError("layer_weights: at least one tap needs a non-zero weight")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        _check_criterion(criterion)
        modes = {False: "none", True: "channel", "none": "none", "channel": "channel", "instance": "instance"}
        if normalize not in modes:
            raise ValueError(f"normalize must be one of False, True, 'none', 'channel', 'instance', got {normalize!r}")
        self.criterion, self.weight, self.normalize, self.reduction = criterion, float(weight), modes[normalize], reduction
        #: a float32 eval-mode copy of the model (encoder BatchNorms folded when ``fuse``); the loss
        #: encodes with its :meth:`~aeutils.model.Autoencoder.encoder_forward`, never with a copy of that loop
        self.model = copy.deepcopy(inner).float().eval()
        if fuse:
            _fuse_conv_bn(self.model.encoder)
        #: the deepest tap with a non-zero weight: the encoder stops there in forward()
        self._stop_after = max((k for k in STAGES if self.layer_weights[k]), key=STAGES.index)
        self._freeze()

    @property
    def encoder(self) -> nn.ModuleList:
        """The frozen encoder stages the loss runs (those of its model copy, BatchNorm folded when ``fuse``)."""
        return self.model.encoder

    def extra_repr(self) -> str:
        return f"layer_weights={self.layer_weights}, criterion={self.criterion!r}, weight={self.weight}, normalize={self.normalize}"

    def _taps(self, x: torch.Tensor, stop_after: str) -> dict[str, torch.Tensor]:
        """The taps up to ``stop_after`` of ``x`` (checked here, encoded in float32 by the model's own pass)."""
        _check_batch(x)  # before .float(): integer input must be refused, not cast
        if min(x.shape[-2:]) < MIN_SIDE:
            raise ValueError(f"EncodingLoss needs sides of at least {MIN_SIDE} px, got {tuple(x.shape[-2:])}")
        taps = STAGES[: STAGES.index(stop_after) + 1]
        return self.model.encoder_forward(x.float(), taps, stop_after=stop_after)[1]

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All four taps of ``x`` (Nx3xHxW RGB in [0, 1], any H, W >= 16), keyed by
        :data:`aeutils.model.STAGES`; for H = W = 128: stage1 NxC1x64x64, stage2/stage3 at 32x32,
        latent Nx1x32x32 (sides ``ceil(H/2)``, ``ceil(H/4)``). Differentiable w.r.t. ``x``."""
        return self._taps(x, STAGES[-1])

    def compare(self, pred_feats: Mapping[str, torch.Tensor], target_feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss per image (shape N, before ``weight``) from two feature dicts of :meth:`features`."""
        total: torch.Tensor | None = None
        for name, w in self.layer_weights.items():
            if not w:
                continue
            a, b = pred_feats[name], target_feats[name]
            if self.normalize == "channel":
                scale = b.detach().std(dim=(0, 2, 3), keepdim=True) + 1e-4
                a, b = a / scale, b / scale
            elif self.normalize == "instance":
                a, b = _instance_norm(a), _instance_norm(b)
            term = w * _pointwise(self.criterion, a, b).flatten(1).mean(1)
            total = term if total is None else total + term
        assert total is not None
        return total

    def speed_choice(self, pred: torch.Tensor) -> "_speed.Choice":
        """How a call on a batch shaped like ``pred`` runs (:func:`aeutils.speed.inference_choice`,
        timing this loss's own computation, with a backward pass to ``pred`` when it needs gradients)."""
        backward = torch.is_grad_enabled() and pred.requires_grad
        return _speed.inference_choice(
            self, tuple(pred.shape), pred.device, backward=backward, force=self.speed,
            run=lambda x, c: self._per_image(x, x, c),
        )

    def _per_image(self, pred: torch.Tensor, target: torch.Tensor, choice: "_speed.Choice") -> torch.Tensor:
        with _speed.running(choice, pred.device):
            with torch.no_grad():
                target_feats = self._taps(_speed.prepare(target.detach(), choice), self._stop_after)
            pred_feats = self._taps(_speed.prepare(pred, choice), self._stop_after)
        as_float = lambda f: {k: v.float() for k, v in f.items()}  # noqa: E731
        with torch.autocast(pred.device.type, enabled=False):  # the comparison stays float32
            return self.compare(as_float(pred_feats), as_float(target_feats)) * self.weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss (or per-image, ``reduction="none"``) between ``pred`` and ``target``."""
        _check_pair(pred, target)
        per_image = self._per_image(pred, target, self.speed_choice(pred))
        return per_image.mean() if self.reduction == "mean" else per_image


class VGGContentLoss(_Frozen):
    """The baseline :class:`EncodingLoss` replaces: ImageNet-VGG19 ``features[:12]`` (up to relu3_1,
    the original SRGAN code's content layer), ImageNet normalisation inside, same call convention:
    ``loss = VGGContentLoss(weights=path)(pred, target)``, Nx3xHxW RGB in [0, 1] (H, W >= 4), scalar.

    Args:
        weights: a LOCAL file holding a VGG19 state dict (torchvision's ``vgg19-dcbb9e9d.pth`` with
            ``features.N.*`` keys, or just the ``features`` part with ``N.*`` keys). Nothing is ever
            downloaded; a missing or wrong file raises :class:`~aeutils.errors.CheckpointError` naming it.
        random_weights: explicitly use random initialisation instead (for timing only).
        criterion: ``"l2"`` (SRGAN's MSE, default) or ``"l1"``.
        weight: overall factor.
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        *,
        random_weights: bool = False,
        criterion: str = "l2",
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        if weights is None and not random_weights:
            raise CheckpointError(
                "VGGContentLoss needs a local VGG19 weights file (weights=path/to/vgg19-dcbb9e9d.pth); "
                "nothing is downloaded. Pass random_weights=True only for timing."
            )
        if weights is not None and random_weights:
            raise ValueError("give either weights= or random_weights=True, not both")
        # == torchvision.models.vgg19(weights=None).features[:12], without building (and randomly
        # initialising) the 120M-parameter classifier we would throw away
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["E"], batch_norm=False)[:VGG_LAYERS]
        if weights is not None:
            self._load(Path(weights))
        self.criterion, self.weight = _check_criterion(criterion), float(weight)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze()

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise CheckpointError(f"{path}: no such VGG19 weights file (give a local torchvision vgg19 state dict)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{path}: not a readable VGG19 state dict ({first[:120]})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a VGG19 state dict, found {type(state).__name__}")
        if any(str(k).startswith("features.") for k in state):
            state = {k[len("features."):]: v for k, v in state.items() if str(k).startswith("features.")}
        own = self.features.state_dict()
        missing = sorted(set(own) - set(state))
        wrong = [k for k in own if k in state and (not torch.is_tensor(state[k]) or state[k].shape != own[k].shape)]
        if missing or wrong:
            what = f"missing {missing[:3]}" if missing else f"shape mismatch at {wrong[0]}"
            raise CheckpointError(f"{path}: not VGG19 weights ({what})")
        self.features.load_state_dict({k: state[k] for k in own})

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar: ``weight * mean(crit(vgg(pred), vgg(target)))``."""
        _check_pair(pred, target)
        if min(pred.shape[-2:]) < 4:
            raise ValueError(f"VGGContentLoss needs images of at least 4x4 pixels, got {tuple(pred.shape[-2:])}")
        with torch.no_grad():
            ft = self.features((target.detach() - self.mean) / self.std)
        fp = self.features((pred - self.mean) / self.std)
        return _pointwise(self.criterion, fp, ft).mean() * self.weight

