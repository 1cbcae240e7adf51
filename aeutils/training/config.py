"""The training config: :class:`TrainConfig` (every knob of :func:`aeutils.training.train`, checked
once, here, with one-line errors named by the CLI option), and the text forms the CLI and notebooks
give it: :func:`parse_config` (``--config n_blocks=2 widths=32,32,8``) and :func:`parse_duration`
(``--time-budget 45m``)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from aeutils.errors import TrainingError
from aeutils.model import AutoencoderConfig, nearest_valid_sizes, unknown_fields

__all__ = ["TrainConfig", "SettingError", "RUNTIME_FIELDS", "config_differences", "architecture_from_dict", "parse_config",
           "parse_duration"]

#: TrainConfig fields that say how long / where / how loudly a run goes, not what it trains: a run
#: folder may be continued with other values of these (``resume="auto"`` compares only the rest)
RUNTIME_FIELDS = ("resume", "device", "workers", "max_steps", "time_budget", "progress", "verbose", "log_every",
                  "print_every")

#: TrainConfig fields that may be None
_OPTIONAL = ("architecture", "vgg_weights", "device", "workers", "max_steps", "time_budget", "val_limit",
             "warmup_steps", "channels_last", "amp", "print_every")
#: TrainConfig fields without a CLI option of their own name (named as the key in messages)
_NOT_FLAGS = ("resume", "architecture", "verbose", "progress", "channels_last", "amp")


class SettingError(TrainingError):
    """A TrainConfig value that is not allowed: ``key`` (the field), ``value`` and the ``problem``;
    shown as the CLI option (``--epochs 'three': expected an integer``), or by
    :func:`~aeutils.training.runs.read_run_config` as the key of ``config.json``."""

    def __init__(self, key: str, value: Any, problem: str, shown: str | None = None) -> None:
        self.key, self.value, self.problem = key, value, problem
        flag = key if key in _NOT_FLAGS else "--" + key.replace("_", "-")
        super().__init__(f"{flag} {repr(value) if shown is None else shown}: {problem}")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of :func:`~aeutils.training.train`, checked when made (one-line :class:`TrainingError`
    named by the CLI option). Saved as ``config.json`` in the run folder (:meth:`to_dict` / :meth:`from_dict`).

    Args:
        epochs: total epochs (also when resuming). batch_size: per process. crop: training crop
            side in pixels (4k+1; random position); validation uses the whole (4k+1) patch.
        lr, weight_decay, schedule, warmup_steps: AdamW and its LR schedule (cosine over
            ``epochs``, warmup default min(200, 5 %) of the steps).
        architecture: the model (default :class:`AutoencoderConfig` ()); a resumed run uses the
            checkpoint's and refuses a different one.
        resume: False: an existing ``last.pt`` is an error; True: continue ``out/last.pt`` (other
            settings may change, e.g. more epochs); ``"auto"``: continue if the folder holds a run
            whose ``config.json`` matches this one (all but :data:`RUNTIME_FIELDS`; a finished one
            returns at once), start if it is empty, error naming the differences otherwise (or that
            there is no ``config.json`` to compare with).
        mse, l1, ssim, vgg, vgg_weights: loss weights (:class:`~aeutils.training.ReconstructionLoss`).
        stain_jitter: HED jitter strength for training augmentation (0: off).
        device: default :func:`aeutils.device.pick_device`. workers: DataLoader processes.
        seed: initial weights, shuffling and augmentation.
        max_steps, time_budget: optional stops (total optimiser steps; seconds of this call, or a
            string "90s", "45m", "1.5h"). A stop inside an epoch does not finish it: ``last.pt``
            keeps the position and a resumed call trains exactly the rest of that epoch.
        val_limit: validate on at most this many patches (evenly spaced; None or 0: all, stored as
            None, as ``--val-limit 0``; there is no "no validation").
        channels_last, amp: speed options; True/False force one; None (default): on CUDA both on (amp:
            bf16, or fp16 + GradScaler); on the CPU measured once per run
            (:func:`~aeutils.training.choose_speed`, skipped where the probe would cost more than 5 %
            of the run) and reused on resume.
        log_every: TensorBoard step-loss interval (steps). progress: tqdm bars. verbose: printed
            lines (rank 0 only); print_every: an epoch line every N epochs (and the first and last;
            None: about 20 lines per run). The full log is ``log.csv`` and TensorBoard.
    """

    epochs: int = 10
    batch_size: int = 16
    crop: int = 181
    lr: float = 2e-3
    weight_decay: float = 0.0
    architecture: AutoencoderConfig | None = None
    resume: bool | str = False
    mse: float = 1.0
    l1: float = 0.0
    ssim: float = 0.0
    vgg: float = 0.0
    vgg_weights: str | None = None
    stain_jitter: float = 0.0
    device: str | None = None
    workers: int | None = None
    seed: int = 0
    max_steps: int | None = None
    time_budget: float | None = None
    val_limit: int | None = 256
    schedule: str = "cosine"
    warmup_steps: int | None = None
    channels_last: bool | None = None
    amp: bool | None = None
    log_every: int = 10
    progress: bool = True
    verbose: bool = True
    print_every: int | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen: normalise once, here
        if isinstance(self.time_budget, str):
            try:
                set_("time_budget", parse_duration(self.time_budget))
            except TrainingError:
                raise SettingError("time_budget", self.time_budget, "expected seconds or a number with s, m or h") from None
        if isinstance(self.architecture, dict):
            set_("architecture", architecture_from_dict(self.architecture))
        if isinstance(self.vgg_weights, os.PathLike):
            set_("vgg_weights", os.fspath(self.vgg_weights))
        if isinstance(self.device, torch.device):
            set_("device", str(self.device))
        if self.val_limit == 0 and not isinstance(self.val_limit, bool):
            set_("val_limit", None)  # 0 means all patches, as --val-limit 0 (not an empty validation set)
        self._check_integers()
        self._check_numbers()
        self._check_choices()

    def _check_integers(self) -> None:
        """Counts and sizes: integers, in range; the crop a valid 4k+1 side."""
        for key, low in (("epochs", 1), ("batch_size", 1), ("crop", None), ("seed", None), ("log_every", 1),
                         ("val_limit", 0), ("workers", 0), ("max_steps", 1), ("warmup_steps", 0), ("print_every", 1)):
            value = getattr(self, key)
            if value is None and key in _OPTIONAL:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise SettingError(key, value, "expected an integer")
            if low is not None and value < low:
                raise SettingError(key, value, f"must be >= {low}" + (" (0: all patches)" if key == "val_limit" else ""), str(value))
        crop = self.crop
        if crop < 5 or crop % 4 != 1:
            lo, hi = nearest_valid_sizes(crop)
            near = f"{lo}, {hi}" if lo != hi else f"{lo}"
            raise SettingError("crop", crop, f"training crops must be 4k+1 px, at least 5 (nearest: {near})", str(crop))

    def _check_numbers(self) -> None:
        """Rates and weights: finite numbers, >= 0 (the learning rate > 0); a time budget > 0 s."""
        for key, strict in (("lr", True), ("weight_decay", False), ("stain_jitter", False), ("mse", False),
                            ("l1", False), ("ssim", False), ("vgg", False), ("time_budget", True)):
            value = getattr(self, key)
            if value is None and key in _OPTIONAL:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SettingError(key, value, "expected a number" + (" of seconds" if key == "time_budget" else ""))
            if not math.isfinite(value) or value < 0 or (strict and value == 0):
                unit = " seconds" if key == "time_budget" else ""
                raise SettingError(key, value, f"must be {'> 0' if strict else '>= 0'}{unit}", f"{value:g}")

    def _check_choices(self) -> None:
        """The schedule, resume mode, switches, names and architecture are one of what the run knows."""
        if self.schedule not in ("cosine", "constant"):
            raise SettingError("schedule", self.schedule, "must be 'cosine' or 'constant'")
        if self.resume not in (True, False, "auto") or not isinstance(self.resume, (bool, str)):
            raise SettingError("resume", self.resume, "must be True, False or 'auto'")
        for key in ("channels_last", "amp", "progress", "verbose"):
            value = getattr(self, key)
            if not (isinstance(value, bool) or (value is None and key in _OPTIONAL)):
                raise SettingError(key, value, "expected true or false" + (" (or null: auto)" if key in _OPTIONAL else ""))
        for key in ("device", "vgg_weights"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise SettingError(key, value, "expected a string (or null)")
        if self.architecture is not None and not isinstance(self.architecture, AutoencoderConfig):
            raise SettingError("architecture", self.architecture,
                               f"expected an AutoencoderConfig, got {type(self.architecture).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the architecture as its dict, None for the default)."""
        d = asdict(self)
        d["architecture"] = self.architecture.to_dict() if self.architecture is not None else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`TrainingError` naming them."""
        unknown = unknown_fields(cls, data)
        if unknown:
            known = sorted(f.name for f in fields(cls))
            raise TrainingError(f"unknown training settings {unknown} (known: {', '.join(known)})")
        return cls(**data)

    def recipe(self) -> dict[str, Any]:
        """What the run trains (all but :data:`RUNTIME_FIELDS`), the architecture spelled out."""
        d = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}
        d["architecture"] = (self.architecture or AutoencoderConfig()).to_dict()
        return d

    def run_name(self, prefix: str = "ae") -> str:
        """A folder name for this recipe: ``ae-<10 hex of its sha256>`` (changing any trained-on
        setting, e.g. epochs or the architecture, gives another folder; a time budget does not)."""
        text = json.dumps(self.recipe(), sort_keys=True, default=list)
        return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)


def config_differences(old: TrainConfig, new: TrainConfig) -> list[str]:
    """``"key old -> new"`` for each recipe setting (:meth:`TrainConfig.recipe`) that differs."""
    a, b = old.recipe(), new.recipe()
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in b if a.get(k) != b.get(k)]


# --------------------------------------------------------------------------- the architecture from data


def architecture_from_dict(data: dict[str, Any], where: str = "architecture") -> AutoencoderConfig:
    """An AutoencoderConfig from a dict, its values checked against the field types first (so
    ``n_blocks="abc"`` names the key and the type instead of failing deep inside)."""
    hints = typing.get_type_hints(AutoencoderConfig)
    known = {f.name for f in fields(AutoencoderConfig)}
    clean: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise TrainingError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        clean[key] = _typed(key, value, hints[key], where)
    try:
        return AutoencoderConfig.from_dict(clean)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"{where}: {exc}") from None


def _typed(key: str, value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type ``hint`` of an AutoencoderConfig field, or a TrainingError naming both."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def bad(expected: str) -> TrainingError:
        return TrainingError(f"{where}: {key}={value!r}: expected {expected}")

    if origin is tuple:
        inner = args[0]
        n = len(args) if args[-1] is not Ellipsis else None
        items = list(value) if isinstance(value, (list, tuple)) else None
        word = {int: "integers", float: "numbers"}.get(inner, inner.__name__)
        expected = f"{n if n else 'some'} comma-separated {word}"
        if items is None or (n is not None and len(items) != n):
            raise bad(expected)
        typed = []
        for v in items:
            if isinstance(v, (list, tuple)):
                raise bad(expected)
            typed.append(_typed(key, v, inner, where))
        return tuple(typed)
    scalar = {bool: ("true or false", (bool,)), int: ("an integer", (int,)), float: ("a number", (int, float)),
              str: ("a string", (str,))}
    if hint in scalar:
        expected, kinds = scalar[hint]
        if (isinstance(value, bool) and hint is not bool) or not isinstance(value, kinds):
            raise bad(expected)
        return float(value) if hint is float else value
    return value


# --------------------------------------------------------------------------- text forms (CLI, notebooks)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if "," in text:
            return [_parse_value(t) for t in text.split(",") if t]
        return text


def parse_config(items: Sequence[str] | None) -> AutoencoderConfig | None:
    """``--config`` values -> AutoencoderConfig: a JSON object, a path to a JSON file, or
    ``key=value`` items (``n_blocks=2 widths=32,32,8 activation=silu``). ``None`` if no items."""
    if not items:
        return None
    data: dict[str, Any] = {}
    for item in items:
        item = item.strip()
        if item.startswith("{"):
            try:
                data.update(json.loads(item))
            except json.JSONDecodeError as exc:
                raise TrainingError(f"--config: invalid JSON ({exc})") from None
        elif "=" in item:
            key, value = item.split("=", 1)
            data[key.strip()] = _parse_value(value.strip())
        elif Path(item).is_file():
            try:
                data.update(json.loads(Path(item).read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                raise TrainingError(f"{item}: not a JSON config file ({exc})") from None
        else:
            raise TrainingError(f"--config {item!r}: expected key=value, a JSON object or a JSON file")
    return architecture_from_dict(data, "--config")


def parse_duration(text: str | float | None) -> float | None:
    """'90', '90s', '45m', '1.5h' -> seconds."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([smh]?)\s*", str(text))
    if not m:
        raise TrainingError(f"time budget {text!r}: expected seconds or a number with s, m or h")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]
