"""One checkpoint format for everything: training resume, the shipped model, the loss.

A checkpoint is a ``torch.save`` of plain data only (dicts, lists, strings, numbers, tensors)::

    {"format": "mscopy-ae/1",
     "config": AutoencoderConfig.to_dict(),
     "model": state_dict,
     "meta": {"epoch", "metrics", "normalisation", "versions", "created", ...},
     "train_state": {optimizer, scaler, scheduler, rng, ...} or absent}

It is written atomically (temp file + rename) and always loaded with ``weights_only=True``, so a
pickle payload is refused, never executed. The model is rebuilt from the stored config.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aeutils.errors import CheckpointError
from aeutils.io import atomic_path
from aeutils.model import Autoencoder, AutoencoderConfig

FORMAT = "mscopy-ae/1"
#: the shipped model, trained on the bundled sample slide (see aeutils/pretrained/README.md)
PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "mscopy_ae_cmu1.pt"


def pretrained_path() -> Path:
    """Where the shipped model is: ``$MSCOPY_PRETRAINED`` if set, else the file inside the package."""
    return Path(os.environ.get("MSCOPY_PRETRAINED", PRETRAINED))


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (on ``map_location``, eval mode), its config, the
    metadata, and the training state for resuming (empty for a model-only checkpoint)."""

    model: Autoencoder
    config: AutoencoderConfig
    meta: dict[str, Any] = field(default_factory=dict)
    train_state: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _versions() -> dict[str, str]:
    import aeutils

    return {"aeutils": str(aeutils.__version__), "torch": str(torch.__version__), "python": str(platform.python_version())}


def _unwrap(model: torch.nn.Module) -> Autoencoder:
    """The Autoencoder inside DDP / torch.compile wrappers."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    if not isinstance(inner, Autoencoder):
        raise TypeError(f"expected an aeutils Autoencoder, got {type(inner).__name__}")
    return inner


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    *,
    meta: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (weights + config) with ``meta`` and optional ``train_state`` atomically.

    ``meta`` and ``train_state`` must be plain data and tensors (what ``weights_only`` loads).
    ``meta`` gets ``normalisation``, ``versions`` and ``created`` added. Returns the path.
    """
    ae = _unwrap(model)
    full_meta = dict(meta or {})
    full_meta.setdefault("normalisation", {"mean": list(ae.config.mean), "std": list(ae.config.std)})
    full_meta.setdefault("versions", _versions())
    full_meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    payload: dict[str, Any] = {
        "format": FORMAT,
        "config": ae.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in ae.state_dict().items()},
        "meta": full_meta,
    }
    if train_state:
        payload["train_state"] = train_state
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw payload dict, loaded safely; :class:`CheckpointError` if it is missing, truncated,
    corrupt, unsafe (pickled objects) or not an mscopy-AE checkpoint."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file")
    if not p.is_file():
        raise CheckpointError(f"{p}: is not a file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: checkpoint file is empty")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types here; the message says which case
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Weights only load failed" in str(exc) or isinstance(exc, getattr(torch.serialization, "pickle").UnpicklingError) and "GLOBAL" in str(exc):
            raise CheckpointError(
                f"{p}: refused: the file holds pickled Python objects, not just tensors and plain data "
                f"(it was not unpickled)"
            ) from None
        if zipfile.is_zipfile(p) is False or "zip" in text.lower() or "EOF" in text or "truncated" in text.lower():
            raise CheckpointError(f"{p}: truncated or corrupt checkpoint ({text[:120]})") from None
        raise CheckpointError(f"{p}: unreadable checkpoint ({text[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "config" not in payload or "model" not in payload:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{p}: not an mscopy-AE checkpoint (format {found!r}, expected {FORMAT!r} with config and weights)")
    return payload


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint and rebuild its model from the stored config (eval mode).

    Raises :class:`CheckpointError` for missing, corrupt, truncated, unsafe or wrong-architecture files.
    """
    p = Path(path)
    payload = read_checkpoint(p, map_location)
    try:
        config = AutoencoderConfig.from_dict(dict(payload["config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: checkpoint config is not an AutoencoderConfig ({exc})") from None
    model = Autoencoder(config)
    state = payload["model"]
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise CheckpointError(
            f"{p}: weights are for another architecture than its config describes: {'; '.join(parts)}"
        )
    model.load_state_dict(state)
    model.to(map_location).eval()
    return Checkpoint(model, config, dict(payload.get("meta", {})), dict(payload.get("train_state", {})), p)


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Autoencoder:
    """Just the model of a checkpoint, in eval mode."""
    return load_checkpoint(path, map_location).model


def load_pretrained(map_location: str | torch.device = "cpu") -> Autoencoder:
    """The shipped model (trained on the bundled sample slide), eval mode, no download."""
    path = pretrained_path()
    if not path.exists():
        raise CheckpointError(f"{path}: the shipped pretrained model is missing from this install")
    return load_model(path, map_location)
