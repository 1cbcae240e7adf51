"""One checkpoint format for everything: training resume, the shipped model, the loss.

Getting a model, the rule: :func:`load_model` is the one entry. ``load_model()`` is the shipped model
(or ``$MSCOPY_PRETRAINED``), ``load_model(path)`` a checkpoint file, ``load_model(model)`` an
:class:`~aeutils.model.Autoencoder` you already have (returned as it is); everything that takes "a
model, a checkpoint path, or nothing" (the loss, the explorers, the figures, ``encode``) goes through
it. :func:`load_checkpoint` is the lower-level loader, for when you need more than the model: its
metadata and training state (resuming). Which *file* a notebook uses (the one named, else a finished
run, else the shipped model) is run discovery (``pick_checkpoint``), not loading. ``load_pretrained``
and ``as_model`` are deprecated names of ``load_model``.

A checkpoint is a ``torch.save`` of plain data only (dicts, lists, strings, numbers, tensors)::

    {"format": "mscopy-ae/1",
     "config": AutoencoderConfig.to_dict(),
     "model": state_dict,
     "digest": sha256 of the weights (names, dtypes, shapes, bytes),
     "state_digest": sha256 of config, meta and train_state (what a resume restores besides the weights),
     "meta": {"epoch", "metrics", "normalisation", "versions", "created", ...},
     "train_state": {optimizer, scaler, scheduler, rng, ...} or absent}

It is written atomically (temp file + rename: a crash leaves the old file) and always loaded with
``weights_only=True``, so a pickle payload is refused, never executed. The model is rebuilt from
the stored config; the weights are checked against their digest and everything else (config, meta,
optimiser / scaler / scheduler / RNG state) against ``state_digest``, so a flipped byte anywhere a
resume reads is caught too.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
import pickle
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import torch

from aeutils.errors import CheckpointError, one_line
from aeutils.io import atomic_write_bytes
from aeutils.model import Autoencoder, AutoencoderConfig

FORMAT = "mscopy-ae/1"
#: the shipped model, trained on the bundled sample slide (see aeutils/pretrained/README.md)
PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "mscopy_ae_two_tissue.pt"
#: environment variable that overrides :data:`PRETRAINED`
PRETRAINED_ENV = "MSCOPY_PRETRAINED"


def pretrained_path() -> Path:
    """Where the shipped model is: ``$MSCOPY_PRETRAINED`` if set, else the file inside the package."""
    return Path(os.environ.get(PRETRAINED_ENV, PRETRAINED))


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
    """Library versions for the metadata (from the installed distributions: nothing is imported)."""
    from importlib import metadata

    import aeutils

    found = {"aeutils": str(aeutils.__version__), "torch": str(torch.__version__)}
    for dist in ("torchvision", "numpy"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover - both are dependencies
            found[dist] = "not installed"
    found["python"] = platform.python_version()
    return found


def _unwrap(model: torch.nn.Module, kind: type = Autoencoder) -> Any:
    """The ``kind`` model (default the Autoencoder; the SR generator for :mod:`aeutils.sr.checkpoint`) inside
    DDP / torch.compile wrappers."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    if not isinstance(inner, kind):
        raise TypeError(f"expected an aeutils {kind.__name__}, got {type(inner).__name__}")
    return inner


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) over the names, dtypes, shapes and bytes of a state dict, in key order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_digest(obj: Any) -> str:
    """sha256 (hex) of plain data and tensors (dicts by sorted key repr, lists, tuples, numbers,
    strings, tensors by dtype, shape and bytes): equal for a payload and its ``torch.load`` round trip."""
    h = hashlib.sha256()

    def feed(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            h.update(f"D{len(o)}|".encode())
            for k in sorted(o, key=repr):
                h.update(f"{k!r}:".encode())
                feed(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"{type(o).__name__}{len(o)}|".encode())
            for v in o:
                feed(v)
        else:
            h.update(f"{type(o).__name__}|{o!r}|".encode())

    feed(obj)
    return h.hexdigest()


def _state_part(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: payload.get(k) for k in ("config", "meta", "train_state")}


_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device)


def _plain(obj: Any, where: str) -> Any:
    """``obj`` as data ``torch.load(weights_only=True)`` accepts: numpy scalars become Python
    numbers, numpy arrays tensors, paths strings; anything else that is not plain data raises
    ``TypeError`` naming where it is (so a checkpoint that could not be loaded is never written)."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple, torch.Size):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if type(obj) is list else tuple(items) if type(obj) is tuple else obj
    if type(obj) in _PLAIN or isinstance(obj, torch.Tensor):
        return obj
    raise TypeError(
        f"checkpoint {where} is a {type(obj).__module__}.{type(obj).__qualname__}: only plain data "
        f"(dict, list, tuple, str, int, float, bool, None) and tensors can be saved"
    )


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    *,
    meta: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    epoch: int | None = None,
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write ``model`` (weights + config) with ``meta`` and optional ``train_state`` atomically.

    ``meta`` and ``train_state`` must be plain data and tensors (what ``weights_only`` loads;
    numpy scalars/arrays and paths are converted, other objects raise ``TypeError``). ``epoch`` and
    ``metrics`` go into ``meta["epoch"]`` / ``meta["metrics"]``; ``meta`` also gets
    ``normalisation`` (the model's mean/std), ``versions`` (aeutils, torch, torchvision, numpy,
    python) and ``created`` (UTC ISO time) unless it has them. Returns the path.
    An exception while writing leaves an existing file at ``path`` untouched; a full disk is an
    ``OSError`` (errno ENOSPC).
    """
    ae = _unwrap(model)
    full_meta = dict(meta or {})
    if epoch is not None:
        full_meta["epoch"] = int(epoch)
    if metrics is not None:
        full_meta["metrics"] = dict(metrics)
    full_meta.setdefault("normalisation", {"mean": list(ae.config.mean), "std": list(ae.config.std)})
    full_meta.setdefault("versions", _versions())
    full_meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    state = {k: v.detach().cpu().clone() for k, v in ae.state_dict().items()}
    payload: dict[str, Any] = {
        "format": FORMAT,
        "config": ae.config.to_dict(),
        "model": state,
        "digest": weights_digest(state),
        "meta": _plain(full_meta, "meta"),
    }
    if train_state:
        payload["train_state"] = _plain(dict(train_state), "train_state")
    payload["state_digest"] = data_digest(_state_part(payload))
    buffer = io.BytesIO()  # serialised in memory, then written with plain writes: a full disk is an OSError
    torch.save(payload, buffer)  # (torch.save to a file raises "RuntimeError: unexpected pos" there instead)
    return atomic_write_bytes(path, buffer.getbuffer())


def read_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *, fmt: str = FORMAT
) -> dict[str, Any]:
    """The raw payload dict, loaded safely; :class:`CheckpointError` naming the file if it is
    missing, empty, truncated, corrupt, unsafe (pickled objects) or not a checkpoint of format ``fmt``
    (default the autoencoder's; :mod:`aeutils.sr.checkpoint` reads its generators with this too)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file")
    if not p.is_file():
        raise CheckpointError(f"{p}: is not a file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: checkpoint file is empty")
    if not zipfile.is_zipfile(p):
        raise CheckpointError(
            f"{p}: truncated or not a PyTorch checkpoint (no zip archive directory found; "
            f"{p.stat().st_size} bytes)"
        )
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower() or "weights_only" in str(exc):
            raise CheckpointError(
                f"{p}: refused: the file holds pickled Python objects, not just tensors and plain "
                f"data (nothing was executed; load only checkpoints written by aeutils)"
            ) from None
        raise CheckpointError(f"{p}: corrupt checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnicodeDecodeError, ... here
        raise CheckpointError(f"{p}: corrupt checkpoint ({_first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt or "config" not in payload or "model" not in payload:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{p}: not an mscopy-AE checkpoint (format {found!r}, expected {fmt!r} with config and weights)"
        )
    return payload


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc, 120)}"


def _config_diff(a: AutoencoderConfig, b: AutoencoderConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    return ", ".join(f"{k} {da[k]!r} (expected {db[k]!r})" for k in da if da[k] != db[k])


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    *,
    config: AutoencoderConfig | None = None,
) -> Checkpoint:
    """Load a checkpoint and rebuild its model from the stored config (eval mode).

    ``config``: if given, the checkpoint must be for exactly this architecture (e.g. the loss
    expects the default one). Raises :class:`CheckpointError` naming the file for missing,
    corrupt, truncated, unsafe or wrong-architecture files.
    """
    p = Path(path)
    payload = read_checkpoint(p, map_location)
    try:
        stored = AutoencoderConfig.from_dict(dict(payload["config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: checkpoint config is not an AutoencoderConfig ({exc})") from None
    if config is not None and stored != config:
        raise CheckpointError(f"{p}: checkpoint is for another architecture: {_config_diff(stored, config)}")
    model = Autoencoder(stored)
    state = payload["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{p}: checkpoint weights are not a dict of tensors")
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
    digest = payload.get("digest")
    if digest is not None and digest != weights_digest(state):
        raise CheckpointError(f"{p}: corrupt checkpoint: the weights do not match their stored sha256 digest")
    stored_state = payload.get("state_digest")  # absent in checkpoints written before it existed
    if stored_state is not None and stored_state != data_digest(_state_part(payload)):
        raise CheckpointError(
            f"{p}: corrupt checkpoint: its config, metadata or training state (optimiser, scaler, "
            f"scheduler, RNG) do not match their stored sha256 digest"
        )
    model.load_state_dict(state)
    model.to(map_location).eval()
    return Checkpoint(model, stored, dict(payload.get("meta", {})), dict(payload.get("train_state", {})), p)


def load_model(
    source: "Autoencoder | str | os.PathLike[str] | None" = None,
    map_location: str | torch.device = "cpu",
    *,
    config: AutoencoderConfig | None = None,
) -> Autoencoder:
    """The one way to get a model: ``source`` is a checkpoint path (loaded with :func:`load_checkpoint`,
    eval mode, on ``map_location``), ``None`` (the shipped model, trained on the bundled sample slides,
    offline; ``$MSCOPY_PRETRAINED`` points to another checkpoint, see :func:`pretrained_path`), or an
    :class:`~aeutils.model.Autoencoder` (returned as it is: not copied, not moved, mode untouched).
    ``config``: the model must have exactly this architecture (else :class:`CheckpointError`). Missing,
    corrupt or unsafe files raise :class:`CheckpointError` naming them; any other ``source`` ``TypeError``.
    """
    if isinstance(source, Autoencoder):
        if config is not None and source.config != config:
            raise CheckpointError(f"model is for another architecture: {_config_diff(source.config, config)}")
        return source
    if source is None:
        path = pretrained_path()
        if not path.exists():
            why = (
                f"${PRETRAINED_ENV} points to a missing file"
                if PRETRAINED_ENV in os.environ
                else f"the shipped pretrained model is missing from this install; set ${PRETRAINED_ENV} to a checkpoint"
            )
            raise CheckpointError(f"{path}: no such checkpoint file ({why})")
        return load_checkpoint(path, map_location, config=config).model
    if isinstance(source, (str, os.PathLike)):
        return load_checkpoint(source, map_location, config=config).model
    raise TypeError(f"expected an Autoencoder, a checkpoint path or None, got {type(source).__name__}")


def _deprecated(old: str) -> None:
    import warnings

    warnings.warn(f"aeutils {old} is deprecated: use aeutils.load_model (the one way to get a model)",
                  DeprecationWarning, stacklevel=3)


def load_pretrained(map_location: str | torch.device = "cpu") -> Autoencoder:
    """Deprecated: ``load_model()`` (the shipped model). Same result, with a ``DeprecationWarning``."""
    _deprecated("load_pretrained()")
    return load_model(None, map_location)


def as_model(
    model_or_path: "Autoencoder | str | os.PathLike[str] | None" = None,
    map_location: str | torch.device = "cpu",
) -> Autoencoder:
    """Deprecated: ``load_model(model_or_path)``. Same result, with a ``DeprecationWarning``."""
    _deprecated("as_model()")
    return load_model(model_or_path, map_location)

