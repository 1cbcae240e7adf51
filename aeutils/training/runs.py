"""The run folder: ``config.json`` (the patch folder and the :class:`TrainConfig`, so a run is
reproducible from its folder), ``last.pt`` / ``best.pt`` (:data:`LAST_NAME`, :data:`BEST_NAME`),
whether a call starts, continues or refuses the run already there, and run discovery:
:func:`find_runs` (finished runs) and :func:`pick_checkpoint` (which model notebooks 04 and 05 use:
notebook 03's newest finished run only when it is not worse than the shipped model on validation)."""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from aeutils.checkpoint import pretrained_path, read_checkpoint
from aeutils.errors import AeutilsError, CheckpointError, TrainingError
from aeutils.io import atomic_write_text, folder_lock, remove_temp_files
from aeutils.training.config import TrainConfig, config_differences

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "CONFIG_NAME", "LAST_NAME", "BEST_NAME", "run_folder_lock", "write_run_config", "read_run_config",
    "resume_decision", "find_runs", "pick_checkpoint", "validation_psnr",
]

CONFIG_NAME = "config.json"
#: the resume point: weights + the whole training state, rewritten after every epoch
LAST_NAME = "last.pt"
#: the weights of the best validation epoch (highest val PSNR; lowest training loss without validation)
BEST_NAME = "best.pt"


@contextmanager
def run_folder_lock(out: Path, rank: int = 0) -> Iterator[None]:
    """Rank 0 (the one that writes) holds the run folder's lock (:func:`aeutils.io.folder_lock`; another
    process training into it gets :class:`~aeutils.errors.FolderBusyError` naming its pid) and removes the
    temp files killed writes left there (``.last.pt.*.tmp``). Other ranks hold nothing."""
    if rank != 0:
        yield
        return
    with folder_lock(out, "train"):
        remove_temp_files(out)
        yield


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
    last = out / LAST_NAME
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
            f"{out}: already holds a run ({LAST_NAME}); pass --resume (resume=True) to continue it or choose another --out"
        )
    if resume and not last.exists():
        raise TrainingError(f"{last}: nothing to resume (no {LAST_NAME} in the run folder)")
    return bool(resume)


def find_runs(runs_dir: str | os.PathLike[str], *, finished: bool = True) -> list[Path]:
    """Run folders directly under ``runs_dir`` (``config.json`` + ``best.pt``), newest ``best.pt``
    first; ``finished``: only those whose ``last.pt`` reached the configured epochs (what notebooks
    04 and 05 pick up from notebook 03). ``[]`` if there are none or ``runs_dir`` does not exist."""
    root = Path(runs_dir)
    found = []
    for run in (d for d in (root.iterdir() if root.is_dir() else ()) if d.is_dir()):
        if not ((run / CONFIG_NAME).is_file() and (run / BEST_NAME).is_file()):
            continue
        if finished:
            try:
                done = int(read_checkpoint(run / LAST_NAME)["meta"].get("epoch", 0))
                if done < read_run_config(run)[1].epochs:
                    continue
            except (AeutilsError, ValueError, TypeError):
                continue
        found.append(run)
    return sorted(found, key=lambda d: (d / BEST_NAME).stat().st_mtime, reverse=True)


def validation_psnr(model_or_path: torch.nn.Module | str | os.PathLike[str], run_dir: str | os.PathLike[str]) -> tuple[float, int]:
    """``(mean PSNR in dB, patches)`` of a model (or checkpoint path) on the validation patches of the run in
    ``run_dir``: the same patches, whole-patch crop and ``val_limit`` subset the run validates on
    (:func:`aeutils.training.datasets.val_dataset`), fp32 on the CPU, eval mode (outputs clamped to [0, 1]).
    TrainingError / PatchError naming the file when the run's config or patches cannot be read."""
    import torch

    from aeutils.checkpoint import load_model
    from aeutils.metrics import psnr
    from aeutils.training.datasets import val_batches, val_dataset

    patches, cfg = read_run_config(run_dir)
    if not patches.exists():
        raise TrainingError(f"{patches}: the run's patch folder is gone (named in {Path(run_dir) / CONFIG_NAME})")
    ds = val_dataset(patches, cfg)
    model = load_model(model_or_path).eval()
    values = []
    with torch.no_grad():
        for x in val_batches(ds, 8):
            values.append(psnr(model(x).float().clamp(0, 1), x))
    if not values:
        return float("nan"), 0
    every = torch.cat(values)
    return float(every.mean()), int(every.numel())


def pick_checkpoint(
    checkpoint: str | os.PathLike[str] | None = None,
    runs_dir: str | os.PathLike[str] | None = None,
    *,
    reference: str | os.PathLike[str] | None = None,
) -> tuple[Path, str]:
    """Which model a notebook uses, and one line saying which and why: ``(path, line)``.

    ``checkpoint`` if given (it must exist). Else the newest *finished* run under ``runs_dir``
    (notebook 03's runs, :func:`find_runs`) **if it is not worse than the shipped model on validation**:
    the run's own validation PSNR (``best.pt``'s metadata, recorded by the trainer) against the shipped
    model's (``reference``, default :func:`aeutils.checkpoint.pretrained_path`) on the same validation
    patches (:func:`validation_psnr`); a tie keeps the run. Else, or when that comparison cannot be made
    (no validation patches, the run's patch folder gone), the shipped model. Load the path with
    :func:`aeutils.checkpoint.load_model`.
    """
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file")
        return path, f"model: {path} (given)"
    shipped = Path(reference) if reference is not None else pretrained_path()
    name = f"the shipped {shipped.name}" if reference is None else str(shipped)
    if runs_dir is None:
        return shipped, f"model: {name} (no runs folder given)"
    runs = find_runs(runs_dir)
    if not runs:
        return shipped, f"model: {name} (no finished run under {runs_dir})"
    run = runs[0]
    best = run / BEST_NAME
    try:
        run_psnr = float(read_checkpoint(best)["meta"].get("metrics", {}).get("val_psnr", math.nan))
        ref_psnr, n = validation_psnr(shipped, run)
    except (AeutilsError, OSError, ValueError, TypeError) as exc:
        return shipped, f"model: {name} (notebook 03's run {run.name} could not be compared with it: {exc})"
    if not (math.isfinite(run_psnr) and math.isfinite(ref_psnr)):
        return shipped, f"model: {name} (notebook 03's run {run.name} has no validation PSNR to compare)"
    where = f"val PSNR on the run's {n} validation patches"
    if run_psnr >= ref_psnr:
        return best, (
            f"model: notebook 03's run {best} ({where}: {run_psnr:.2f} dB, not worse than {name}'s {ref_psnr:.2f} dB)"
        )
    return shipped, (
        f"model: {name} ({where}: {ref_psnr:.2f} dB; notebook 03's newest finished run {run.name} reached "
        f"{run_psnr:.2f} dB, so it is not used; pass its {BEST_NAME} by name to look at it anyway)"
    )
