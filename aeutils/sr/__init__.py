"""Super-resolution (x4) of H&E, one package of one-idea modules:

    degrade     the degradation: antialiased bicubic x4 downscale (LR inputs), bicubic upscale (the baseline)
    arch        the SRGAN networks: SRResNet-style Generator (presets "paper" 16 x 64, "cpu" 6 x 32), Discriminator
    config      SRConfig: every knob of an SRGAN run (saved as RUN/config.json)
    checkpoint  generator checkpoints (the autoencoder's safe, digest-checked format), load_pretrained_sr
    train       train_srgan: pixel pretraining, then pixel + content + adversarial (``sr train``)
    apply       x4 SR of whole slides (tiled pyramidal TIFF) and image folders (``sr apply``)
    cli         python -m aeutils sr {train,apply}
    basicsr_plugin  the histology loss and an extract-output dataset registered for BasicSR (the [basicsr] extra)
    network     SRNet, the small residual x4 network the content-loss bench trains, and its loop (train_sr)
    search      the content-loss comparison's arms, weight search and validation rule
    curves      every trained weight judged on the test images: perception-distortion curves, matched-distortion headline
    report      goal, tables, figures
    bench       the SR content-loss comparison, run end to end (``bench/sr_losses.py``)
    gan_bench   the GAN regime: SRGAN with each content loss vs a pixel-loss SRResNet, one shared pretraining (``bench/sr_gan.py``)
"""
from __future__ import annotations

from typing import Any

from aeutils.sr.degrade import SCALE, bicubic_down, bicubic_up, downscale, upscale_bicubic

__all__ = ["SCALE", "bicubic_down", "bicubic_up", "downscale", "upscale_bicubic",
           "Generator", "GeneratorConfig", "Discriminator", "PRESETS", "SRConfig", "train_srgan", "load_generator",
           "save_generator", "load_pretrained_sr", "sr_slide", "sr_folder", "super_resolve_image"]

#: names imported from their home module on first use
_LAZY = {
    "Generator": "aeutils.sr.arch", "GeneratorConfig": "aeutils.sr.arch", "Discriminator": "aeutils.sr.arch",
    "PRESETS": "aeutils.sr.arch", "SRConfig": "aeutils.sr.config", "train_srgan": "aeutils.sr.train",
    "load_generator": "aeutils.sr.checkpoint", "save_generator": "aeutils.sr.checkpoint",
    "load_pretrained_sr": "aeutils.sr.checkpoint", "sr_slide": "aeutils.sr.apply", "sr_folder": "aeutils.sr.apply",
    "super_resolve_image": "aeutils.sr.apply",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aeutils.sr' has no attribute {name!r}")
