"""mscopy-AE: histology-specific autoencoder encodings of H&E patches.

Modules (each one idea):
    slides      open whole-slide images (OpenSlide), levels, mpp, thumbnails, region reads
    scale       the scale patches are read at: level, mpp with antialiased resampling, --assume-mpp
    tissue      tissue masks: detected on thumbnails, or your own (``--mask``)
    annotations CAMELYON16 / ASAP XML tumour polygons
    patches     grid patch extraction to PNG + manifest.csv (the ``extract`` command); a package: grid
                planning, QC figure, PNG/row codec, runner, resume, extract(), CLI
    manifest    manifest.csv: columns, reading, merging shards (the ``manifest`` command)
    model       the residual autoencoder and its config
    introspect  shapes, parameters, FLOPs and receptive field of a model (notebook 02)
    checkpoint  safe, atomic checkpoints (weights + config + metadata); ``load_model``, the one way to get a model
    data        patches as tensors; a package: records, the held-out split, image reading, augmentations,
                PatchDataset, sample-slide patches
    metrics     metrics and judges: psnr/ssim (torchmetrics), the SR judges and bootstrap intervals
    training    the trainer: ``train()`` and ``TrainConfig`` (the ``train`` command), single GPU / CPU / torchrun
                DDP; a package: config, step, rng, trainer, datasets, distributed, runs (the run folder, find_runs,
                pick_checkpoint: which model notebooks 04/05 use), logs, loop, cli
    encoding    running a model over a batch of patches (``encode_batch`` -> ``EncodedBatch``, ``rgb_batch``)
    viz         views (numbers -> display arrays), figures (the ``figures`` command), the ipywidgets explorer
    slidemap    whole-slide encoding maps as pyramidal TIFFs (the ``encode`` command); a package: geometry,
                sources, tiles, stats, store, pyramid, figure, encode_slide(), CLI
    slide_explorer  the slide-level ipywidgets explorer linked to an encoding map
    losses      every loss: EncodingLoss (the encoder as a perceptual loss), the random-encoder control,
                the ImageNet baselines (VGG19 file, EfficientNet-Lite0, VGG16-HED), ReconstructionLoss
    sensitivity evidence: a loss's response to lost detail vs to nuisances
    sr          x4 super-resolution: the degradation, the bench's small SRNet, the content-loss comparison
    device      one helper that picks cuda > mps > cpu
    speed       the fastest way to run a model here (fp32 / channels_last / bf16 autocast), chosen by measurement
    tiffread    tiled TIFF/SVS strips decoded straight from the tiles, where verified identical to OpenSlide
    io          atomic file writes
    nbparams    how values reach a notebook: full-size literals, then CI sizes, then MSCOPY_<NAME> (settle)
    sample      the bundled sample slides (CMU skin, prostate), checksum-verified
    errors      the exception types (one clear line each; the CLI prints them as ``error: ...``)
    cli         ``python -m aeutils <command>``: extract, manifest, train, figures, encode

``from aeutils import ...``: ``load_model``, ``Autoencoder``, ``AutoencoderConfig``, ``EncodingLoss``,
``extract``, ``train``, ``TrainConfig``, ``encode_slide``, ``sample_slide(s)``, ``AeutilsError``.
Importing ``aeutils`` does not import torch: the extraction path stays fast to start.
"""
import typing as _typing  # no ``from __future__ import annotations`` here: it would shadow aeutils.annotations

from aeutils.errors import AeutilsError
from aeutils.sample import sample_slide, sample_slides

__version__ = "0.1.0"
#: what users type: ``from aeutils import ...`` (``dir(aeutils)`` lists these and the modules above)
__all__ = [
    "AeutilsError", "sample_slide", "sample_slides", "load_model", "Autoencoder", "AutoencoderConfig", "extract",
    "train", "encode_slide", "TrainConfig", "EncodingLoss", "__version__",
]

#: what users type, imported on first use (``extract`` stays torch-free; the others import torch).
#: The trainer's module is ``aeutils.training`` (not ``aeutils.train``) so that ``aeutils.train`` stays the function.
_LAZY = {
    "extract": "aeutils.patches",
    "train": "aeutils.training",
    "encode_slide": "aeutils.slidemap",
    "TrainConfig": "aeutils.training",
    "EncodingLoss": "aeutils.losses",
    "Autoencoder": "aeutils.model",
    "AutoencoderConfig": "aeutils.model",
    "load_model": "aeutils.checkpoint",
}
#: deprecated root names -> (home module, name there); they still work, with a DeprecationWarning there
_DEPRECATED = {"load_pretrained": ("aeutils.checkpoint", "load_pretrained")}
#: the modules of the package docstring (``dir(aeutils)`` shows them for ``aeutils.<Tab>``)
_MODULES = (
    "slides", "scale", "tissue", "annotations", "patches", "manifest", "model", "introspect", "checkpoint", "data",
    "metrics", "training", "encoding", "viz", "slidemap", "slide_explorer", "losses", "sensitivity", "sr", "device",
    "speed", "tiffread", "io", "sample", "errors", "cli",
)

if _typing.TYPE_CHECKING:  # pragma: no cover
    from aeutils.checkpoint import load_model
    from aeutils.losses import EncodingLoss
    from aeutils.model import Autoencoder, AutoencoderConfig
    from aeutils.patches import extract
    from aeutils.slidemap import encode_slide
    from aeutils.training import TrainConfig, train


def __getattr__(name: str) -> object:
    """``from aeutils import extract, train, TrainConfig, EncodingLoss, encode_slide, Autoencoder,
    AutoencoderConfig, load_model``: import the home module on first use."""
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _DEPRECATED:  # not cached: the home function warns on each call
        module, attr = _DEPRECATED[name]
        return getattr(importlib.import_module(module), attr)
    if name in _MODULES:  # ``aeutils.viz`` without ``import aeutils.viz`` first
        return importlib.import_module(f"aeutils.{name}")
    raise AttributeError(f"module 'aeutils' has no attribute {name!r}")


def __dir__() -> list[str]:
    """Tab completion: what users type (``__all__``) and the modules, not the helpers this file imports."""
    return sorted({*__all__, *_MODULES})
