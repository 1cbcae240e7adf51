"""Generator checkpoints: the autoencoder's checkpoint format (:mod:`aeutils.checkpoint`: plain data and
tensors, atomic writes, ``weights_only`` loads, a sha256 of the weights and one of everything a resume
reads) with format ``"mscopy-sr/1"`` and a :class:`~aeutils.sr.arch.GeneratorConfig` as its config. The
training state (discriminator weights, both optimisers, RNG states, step, phase) rides in ``train_state``.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aeutils.checkpoint import _plain, _state_part, _unwrap, _versions, data_digest, read_checkpoint, weights_digest
from aeutils.errors import CheckpointError
from aeutils.io import atomic_path
from aeutils.sr.arch import Generator, GeneratorConfig

__all__ = ["SR_FORMAT", "SRCheckpoint", "save_generator", "load_generator", "PRETRAINED_SR", "load_pretrained_sr"]

SR_FORMAT = "mscopy-sr/1"
#: the shipped generator (see aeutils/pretrained/README_sr.md)
PRETRAINED_SR = Path(__file__).resolve().parent.parent / "pretrained" / "mscopy_srgan_small.pt"


@dataclass
class SRCheckpoint:
    """A loaded generator checkpoint: the generator (eval mode), its config, metadata, training state."""

    model: Generator
    config: GeneratorConfig
    meta: dict[str, Any] = field(default_factory=dict)
    train_state: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_generator(
    path: str | os.PathLike[str], model: torch.nn.Module, *, meta: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write the generator (weights + config) with ``meta`` (plain data) and an optional ``train_state``
    atomically (a crash leaves an existing file untouched). ``meta`` gets versions and the creation time."""
    g = _unwrap(model, Generator)
    full_meta = dict(meta or {})
    full_meta.setdefault("versions", _versions())
    full_meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    state = {k: v.detach().cpu().clone() for k, v in g.state_dict().items()}
    payload: dict[str, Any] = {
        "format": SR_FORMAT, "config": g.config.to_dict(), "model": state, "digest": weights_digest(state),
        "meta": _plain(full_meta, "meta"),
    }
    if train_state:
        payload["train_state"] = _plain(dict(train_state), "train_state")
    payload["state_digest"] = data_digest(_state_part(payload))
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_generator(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> SRCheckpoint:
    """Load a generator checkpoint (eval mode); :class:`CheckpointError` naming the file if it is missing,
    corrupt, truncated, unsafe, not a generator, or its weights / state do not match their digests."""
    p = Path(path)
    payload = read_checkpoint(p, map_location, fmt=SR_FORMAT)
    try:
        config = GeneratorConfig.from_dict(dict(payload["config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: checkpoint config is not a GeneratorConfig ({exc})") from None
    state = payload["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{p}: checkpoint weights are not a dict of tensors")
    if payload.get("digest") != weights_digest(state):
        raise CheckpointError(f"{p}: corrupt checkpoint: the weights do not match their stored sha256 digest")
    if payload.get("state_digest") != data_digest(_state_part(payload)):
        raise CheckpointError(f"{p}: corrupt checkpoint: its config, metadata or training state do not match "
                              f"their stored sha256 digest")
    model = Generator(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{p}: weights do not fit the stored generator config ({str(exc).splitlines()[0]})") from None
    model.to(map_location).eval()
    return SRCheckpoint(model, config, dict(payload.get("meta", {})), dict(payload.get("train_state", {})), p)


def load_pretrained_sr(map_location: str | torch.device = "cpu") -> Generator:
    """The shipped x4 generator (eval mode, offline): ``G(lr)`` maps Nx3xhxw RGB in [0, 1] to Nx3x4hx4w.
    Trained on the bundled slides' training regions with the histology content loss and the adversarial
    term (model card: ``aeutils/pretrained/README_sr.md``)."""
    if not PRETRAINED_SR.exists():
        raise CheckpointError(f"{PRETRAINED_SR}: the shipped generator is missing from this install")
    return load_generator(PRETRAINED_SR, map_location).model
