"""Super-resolution (x4) of H&E, one package:

    degrade  the degradation: antialiased bicubic x4 downscale (LR inputs), bicubic upscale (the baseline)
    network  SRNet, the small residual x4 network the content-loss bench trains, and its loop (train_sr)
    search   the comparison's arms, weight search and validation rule
    curves   every trained weight judged on the test images: perception-distortion curves, matched-distortion headline
    report   goal, tables, figures
    bench    the SR content-loss comparison, run end to end (``bench/sr_losses.py``)
"""
from __future__ import annotations

from aeutils.sr.degrade import SCALE, bicubic_down, bicubic_up, downscale, encoder_crop, upscale_bicubic

__all__ = ["SCALE", "bicubic_down", "bicubic_up", "downscale", "upscale_bicubic", "encoder_crop"]
