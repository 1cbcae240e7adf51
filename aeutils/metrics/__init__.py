"""Metrics and judges, one place (as BasicSR's ``metrics/``): per-image values over Nx3xHxW RGB in [0, 1].

    pixel   psnr (dB), ssim: torchmetrics, used to score reconstructions
    judges  Judges (PSNR, SSIM, haematoxylin SSIM, HaarPSI, ST-LPIPS, nuclei) of super-resolved images and
            paired bootstrap intervals
    nuclei  the nuclei judge: nuclei segmented from haematoxylin in HR and SR, matched object by object
"""
from __future__ import annotations

from aeutils.metrics.pixel import psnr, ssim

__all__ = ["psnr", "ssim"]
