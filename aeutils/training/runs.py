"""The run folder: ``config.json`` (the patch folder and the :class:`TrainConfig`, so a run is
reproducible from its folder), whether a call starts, continues or refuses the run already there,
and :func:`find_runs` (the finished runs notebooks 04 and 05 pick up from notebook 03)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from aeutils.errors import TrainingError
from aeutils.io import atomic_write_text
from aeutils.training.config import TrainConfig, config_differences

__all__ = ["CONFIG_NAME", "write_run_config", "read_run_config", "resume_decision", "find_runs"]

CONFIG_NAME = "config.json"


def write_run_config(out: Path, patches_dir: Path, config: TrainConfig) -> Path:
    """``out/config.json`` (atomic): the patch folder and the TrainConfig, so the run is reproducible."""
    data = {"patches_dir": str(patches_dir), **config.to_dict()}
    return atomic_write_text(out / CONFIG_NAME, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_run_config(run_dir: str | os.PathLike[str]) -> tuple[Path, TrainConfig]:
    """``(patches_dir, TrainConfig)`` from a run folder's ``config.json``; TrainingError naming the file
    (and the key, for a value of the wrong type or out of range, e.g. a hand edit) if unreadable."""
    from aeutils.training.config import SettingError

    path = Path(run_dir) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise TrainingError(f"{path}: not a run config (a JSON object expected)")
        if not isinstance(data.get("patches_dir"), str):
            raise TrainingError(f'{path}: key "patches_dir" is {json.dumps(data.get("patches_dir"))}: expected a folder path')
        patches = Path(data.pop("patches_dir"))
        return patches, TrainConfig.from_dict(data)
    except SettingError as exc:  # a hand-edited value: the file and its key, not the CLI option
        raise TrainingError(f'{path}: key "{exc.key}" is {_json(exc.value)}: {exc.problem}') from None
    except TrainingError as exc:
        text = str(exc)
        raise TrainingError(text if text.startswith(str(path)) else f"{path}: {text}") from None
    except FileNotFoundError:
        raise TrainingError(f"{path}: no such run config") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{path}: not a run config ({exc})") from None


def _json(value: object) -> str:
    """``value`` as written in a JSON file (its repr if it is not JSON data)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def resume_decision(out: Path, cfg: TrainConfig) -> bool:
    """Whether this call continues the run in ``out`` (True) or starts one (False), from
    ``cfg.resume`` and what the folder holds; a TrainingError saying what to pass otherwise
    (a run there without ``resume``; ``resume="auto"`` and a run with another recipe, or one without
    ``config.json`` to compare with; ``resume=True`` and no ``last.pt``). Nothing is read beyond ``config.json``, nothing written."""
    last = out / "last.pt"
    resume = cfg.resume
    if resume == "auto":
        if last.exists():
            if not (out / CONFIG_NAME).exists():  # nothing to compare with: continuing it is the user's call
                raise TrainingError(
                    f"{out}: holds a run without {CONFIG_NAME}; pass --resume (resume=True) to continue it, "
                    f"or choose another --out"
                )
            diff = config_differences(read_run_config(out)[1], cfg)
            if diff:
                raise TrainingError(
                    f"{out}: already holds a run with other settings ({'; '.join(diff)}); pass --resume "
                    f"(resume=True) to continue it with these, or choose another --out"
                )
        resume = last.exists()
    if last.exists() and not resume:
        raise TrainingError(
            f"{out}: already holds a run (last.pt); pass --resume (resume=True) to continue it or choose another --out"
        )
    if resume and not last.exists():
        raise TrainingError(f"{last}: nothing to resume (no last.pt in the run folder)")
    return bool(resume)


def find_runs(runs_dir: str | os.PathLike[str], *, finished: bool = True) -> list[Path]:
    """Run folders directly under ``runs_dir`` (``config.json`` + ``best.pt``), newest ``best.pt``
    first; ``finished``: only those whose ``last.pt`` reached the configured epochs (what notebooks
    04 and 05 pick up from notebook 03). ``[]`` if there are none or ``runs_dir`` does not exist."""
    from aeutils.checkpoint import read_checkpoint
    from aeutils.errors import AeutilsError

    root = Path(runs_dir)
    found = []
    for run in (d for d in (root.iterdir() if root.is_dir() else ()) if d.is_dir()):
        if not ((run / CONFIG_NAME).is_file() and (run / "best.pt").is_file()):
            continue
        if finished:
            try:
                done = int(read_checkpoint(run / "last.pt")["meta"].get("epoch", 0))
                if done < read_run_config(run)[1].epochs:
                    continue
            except (AeutilsError, ValueError, TypeError):
                continue
        found.append(run)
    return sorted(found, key=lambda d: (d / "best.pt").stat().st_mtime, reverse=True)
