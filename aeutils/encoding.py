"""Running a model over a batch of patches: :func:`encode_batch` -> :class:`EncodedBatch` (inputs,
encodings, reconstructions, PSNR/SSIM, optionally every encoder tap); :func:`rgb_batch` turns one
uint8 RGB read into the model's input. The figures and explorers of
:mod:`aeutils.viz` and :mod:`aeutils.slide_explorer` show what it returns; whole slides are
:mod:`aeutils.slidemap`. torch is imported inside the functions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from aeutils.model import Autoencoder


def rgb_batch(rgb: np.ndarray) -> "torch.Tensor":
    """An HxWx3 uint8 RGB image (a slide read, a PNG) as a 1x3xHxW float32 batch in [0, 1], the model's input.

    Slide reads (``Slide.read_region``: NumPy over PIL's bytes) are read-only; torch cannot share a
    read-only buffer (``torch.from_numpy`` and torchvision's ``to_tensor`` warn "not writable"), so such
    an array is copied once; a writable, C-contiguous one is used as it is.
    """
    import torch

    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {a.shape} and dtype {a.dtype}")
    if not (a.flags.writeable and a.flags.c_contiguous):
        a = np.array(a, order="C")
    return torch.from_numpy(a).permute(2, 0, 1)[None].float().div_(255.0)


@dataclass
class EncodedBatch:
    """A batch and what the model makes of it (all on the CPU, float32).

    ``inputs`` Nx3xSxS in [0, 1]; ``latent`` Nx(latent_channels)xsxs (s = (S+3)/4; 1 channel for the
    shipped model); ``outputs`` Nx3xSxS in [0, 1];
    ``features`` the activations at the encoder's taps, keyed by :data:`aeutils.model.TAPS` (only when asked for);
    ``psnr`` (dB) and ``ssim`` per image (length N).
    """

    inputs: "torch.Tensor"
    latent: "torch.Tensor"
    outputs: "torch.Tensor"
    psnr: "torch.Tensor"
    ssim: "torch.Tensor"
    features: dict[str, "torch.Tensor"] = field(default_factory=dict)


def encode_batch(
    model: "Autoencoder", x: "torch.Tensor", *, features: bool = False, batch_size: int = 16, speed: str | None = None
) -> EncodedBatch:
    """Run ``model`` (eval mode, no grad) on ``x`` (Nx3xSxS float RGB in [0, 1], S = 4k+1 pixels: it
    decodes the encodings, :func:`aeutils.model.check_size`) in chunks of ``batch_size``. Integer input
    (uint8 0-255) raises ``TypeError`` (convert with ``x.float() / 255``, or use :func:`rgb_batch`).

    Returns :class:`EncodedBatch` (float32 tensors on the CPU); with ``features=True`` it also keeps every
    encoder tap's maps. ``speed``: None (default) runs as :func:`aeutils.speed.inference_choice`
    decides for this chunk shape (fp32 until enough chunks were encoded in this process for its probe
    to pay; a few figures' worth never probes), or a candidate name of :data:`aeutils.speed.CANDIDATES`
    to force one (also ``$MSCOPY_CPU_SPEED``). The model is never modified.
    """
    import torch

    from aeutils import speed as _speed
    from aeutils.metrics import psnr, ssim

    from aeutils.model import _check_batch, check_size

    _check_batch(x)  # before any chunk is cast to float32: uint8 0-255 must be refused, not encoded
    check_size(x.shape[-2], x.shape[-1])
    if speed is not None and speed not in _speed.CANDIDATES:
        raise ValueError(f"speed must be None or one of {_speed.CANDIDATES}, got {speed!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    zs, ys, feats = [], [], {}
    chunk_shape = (min(batch_size, max(1, x.shape[0])), *x.shape[1:])
    try:
        choice = _speed.inference_choice(
            model, chunk_shape, device, expected_batches=-(-x.shape[0] // batch_size), force=speed,
            run=lambda xb, c: _speed.forward(lambda t: model.decode(model.encode(t)), xb, c),
        )
        with torch.inference_mode(), _speed.running(choice, device):
            for chunk in x.split(batch_size):
                xb = _speed.prepare(chunk.to(device=device, dtype=torch.float32), choice)
                if features:
                    f = model.encode_features(xb)
                    for k, v in f.items():
                        feats.setdefault(k, []).append(v.float().contiguous().cpu())
                    z = f["latent"]
                else:
                    z = model.encode(xb)
                ys.append(model.decode(z).float().contiguous().cpu())
                zs.append(z.float().contiguous().cpu())
    finally:
        model.train(was_training)
    inputs = x.detach().float().cpu()
    latent, outputs = torch.cat(zs), torch.cat(ys)
    return EncodedBatch(
        inputs=inputs,
        latent=latent,
        outputs=outputs,
        psnr=psnr(outputs, inputs),
        ssim=ssim(outputs, inputs),
        features={k: torch.cat(v) for k, v in feats.items()},
    )
