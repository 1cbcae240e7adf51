"""``extract()``: slides -> PNG tree + ``manifest.csv`` + QC figures, resumable, on every core.

The procedure, one step a function: check every option once (``_check_options``); pick this run's
slides (duplicates, clashing names, shard: ``_this_runs_slides``); read what the output folder holds
(:class:`~aeutils.patches.resume.OutFolder`); per slide plan the grid
(:func:`~aeutils.patches.grid.plan_slide`), keep its finished patches, queue the rest as tasks on the
pool (:mod:`aeutils.patches.runner`) and draw its QC figure while the pool works (``_Run.queue``);
collect the tasks' results, rewriting the manifest now and then (``_Run.collect``); on the way out
(Ctrl-C included) stop the pool and write the manifest of what is finished (``_Run.close``). Never
imports torch.
"""
from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from aeutils.errors import AeutilsError, AnnotationError, PatchError, SlideError
from aeutils.io import LOCK_NAME, folder_lock, missing_reason, remove_temp_files
from aeutils.manifest import MANIFEST_NAME, SHARD_LOCK_GLOB, shard_lock_name, shard_manifest_name
from aeutils.patches.grid import (
    LABEL_DIRS, SlidePlan, check_grid_options, check_positive, keep_label, norm_level, parse_shard, plan_slide,
    shard_of,
)
from aeutils.patches.qc import save_qc
from aeutils.patches.resume import OutFolder, check_out, fold_shard_manifests
from aeutils.patches.runner import Task, TaskResult, blocks, close_handles, default_workers, run_task, start_pool
from aeutils.scale import check_assume_mpp, check_filter

__all__ = ["extract", "MANIFEST_EVERY_S"]

#: Seconds between manifest rewrites during a run (more on big runs: see extract).
MANIFEST_EVERY_S = 10.0


def _print(msg: str) -> None:
    """Default ``log``: warnings to stderr, the rest (per-slide summaries) to stdout."""
    print(msg, file=sys.stderr if msg.startswith("warning:") else sys.stdout, flush=True)


def _check_mask(mask: Any, n_slides: int) -> None:
    """One slide's mask (an array or a file) with several slides, or a mask path that is not there: refused."""
    import numpy as np

    if mask is None or isinstance(mask, dict):
        return
    if isinstance(mask, (str, os.PathLike)):
        if not Path(mask).exists():
            why = missing_reason(mask)
            raise PatchError(f"{mask}: " + ("no such mask file or folder" if why == "no such file" else str(why)))
        if Path(mask).is_dir():
            return
    elif not isinstance(mask, np.ndarray):
        raise PatchError(f"mask must be a 2-D array, a PNG/TIFF file, a folder of <slide>.png or a dict, "
                         f"got {type(mask).__name__}")
    if n_slides > 1:
        raise PatchError(f"one mask ({mask if not isinstance(mask, np.ndarray) else 'an array'}) for {n_slides} "
                         f"slides: give a folder of <slide stem>.png masks (--mask-dir) or a dict name -> mask")


def _this_runs_slides(
    paths: list[Path], shard: tuple[int, int] | None, say: Callable[[str], None]
) -> tuple[list[Path], list[AeutilsError]]:
    """The slides of this run (each file once, in shard ``shard``) and one error per clashing name."""
    unique: list[Path] = []
    by_name: dict[str, Path] = {}
    bad_names: list[tuple[Path, Path]] = []
    resolved: set[Path] = set()
    for p in paths:
        rp = p.resolve() if p.exists() else p.absolute()
        if rp in resolved:
            say(f"warning: {p} is given more than once; extracted once")
            continue
        resolved.add(rp)
        if p.stem in by_name:
            bad_names.append((p, by_name[p.stem]))
            continue
        by_name[p.stem] = p
        unique.append(p)
    if shard is not None:
        k, n = shard
        unique = [p for p in unique if shard_of(p.stem, n) == k]
        bad_names = [(p, q) for p, q in bad_names if shard_of(p.stem, n) == k]
    errors: list[AeutilsError] = [
        SlideError(f"{p}: slide name {p.stem!r} is taken by {q} in this run (patch files are named "
                   f"<slide name>_<x>_<y>.png); rename one of them") for p, q in bad_names]
    return unique, errors


def extract(
    slides: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    patch_size: int = 181,
    level: int | None = 0,
    mpp: float | None = None,
    assume_mpp: float | None = None,
    resample_filter: str | None = None,
    stride: int | None = None,
    min_tissue: float = 0.5,
    annotations: Any = None,
    mask: Any = None,
    keep: str | None = None,
    max_patches: int | None = None,
    seed: int = 0,
    shard: str | tuple[int, int] | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
    on_error: Callable[[AeutilsError], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Cut the tissue cells of ``slides`` into ``out`` (PNG tree + manifest + QC figures).

    Grid and scale parameters as in :func:`plan_slide` (``mpp``/``assume_mpp``: microns per pixel of
    the patches / of the slides' level 0; ``resample_filter``: how a level is downsampled when no level
    has ``mpp``, a key of :data:`aeutils.scale.FILTERS`, default ``"lanczos"``; the manifest's
    ``resample_filter`` column records it); ``mask``: your own tissue mask instead of the automatic one
    (for one slide an H x W bool array or a PNG/TIFF file covering the whole slide at any resolution,
    nonzero = tissue; for several a folder of ``<slide stem>.png`` or a dict slide name -> mask;
    ``min_tissue`` then applies to the mask's fraction per patch; the manifest's ``tissue_source``
    column says which mask); ``keep`` = ``"tumour"`` or ``"normal"`` (needs ``annotations``);
    ``max_patches``: a seeded (``seed``) uniform sample per slide; ``shard`` = ``"K/N"``: only the
    slides of shard K (by a stable hash of the name), manifest in ``manifest.shard-K-of-N.csv`` (merge
    with :func:`aeutils.manifest.merge_manifests`, or rerun without ``shard``: finished patches are kept
    and the shard files folded into ``manifest.csv``); ``overwrite``: replace a slide's earlier patches
    made with other settings (otherwise refused); ``workers`` processes (default: every core).

    Option errors are raised once, before any slide. A slide that fails (missing, not a slide,
    corrupt, no tissue, bad annotations or mask, conflicting earlier run, ...) does not stop the others:
    its error goes to ``on_error`` if given, otherwise the first one is raised after the other slides are
    done. ``log`` receives the one-line notes: a warning when a slide's scale is unknown, one summary
    line per finished slide (default: warnings to stderr, summaries to stdout, above the progress bar).
    Returns the manifest path.

    The pool forks on Linux; elsewhere it spawns, which re-imports the calling script: call ``extract``
    from under ``if __name__ == "__main__":`` there (notebooks need nothing).
    """
    paths = [slides] if isinstance(slides, (str, os.PathLike)) else list(slides)
    size, level = _check_options(paths, patch_size, level, mpp, assume_mpp, stride, min_tissue, annotations, mask,
                                 keep, max_patches)
    resample_filter = check_filter(resample_filter)
    shard_kn = parse_shard(shard)
    nworkers = default_workers() if workers is None else check_positive("workers", workers)
    out = Path(out)
    check_out(out)
    plan_of = partial(plan_slide, patch_size=size, level=level, stride=stride, min_tissue=min_tissue,
                      annotations=annotations, mpp=mpp, assume_mpp=assume_mpp, resample_filter=resample_filter,
                      keep=keep, max_patches=max_patches,
                      seed=seed, mask=mask)

    notes = _Notes(log or _print, on_error)
    unique, name_errors = _this_runs_slides([Path(p) for p in paths], shard_kn, notes.say)
    for err in name_errors:
        notes.fail(err)
    manifest = out / (MANIFEST_NAME if shard_kn is None else shard_manifest_name(*shard_kn))
    with _out_lock(out, shard_kn):
        folder = OutFolder(out, manifest, {p.stem for p in unique}, notes.say)
        run = _Run(folder, notes, nworkers if unique else 1, progress)
        completed = False
        try:
            for p in unique:
                run.queue(plan_of, p, overwrite)
            run.collect()
            completed = True
        finally:
            manifest = run.close(completed)
            if completed and shard_kn is None:
                fold_shard_manifests(out, {pl.name for pl in folder.plans} - folder.failed)
    if notes.errors and on_error is None:
        raise notes.errors[0]
    return manifest


@contextmanager
def _out_lock(out: Path, shard: tuple[int, int] | None) -> Iterator[None]:
    """Hold the output folder's lock (:func:`aeutils.io.folder_lock`). An unsharded run is the one
    writer (no ``--shard`` run beside it either) and removes the temp files killed writes left; a
    ``--shard K/N`` run is the one writer of shard K/N beside the other shards (they write other slides)."""
    if shard is None:
        with folder_lock(out, "extract", exclusive_of=(SHARD_LOCK_GLOB,)):
            remove_temp_files(out, LABEL_DIRS.values())
            yield
    else:
        k, n = shard
        with folder_lock(out, f"extract --shard {k}/{n}", name=shard_lock_name(k, n), exclusive_of=(LOCK_NAME,)):
            yield


def _check_options(
    paths: list[Any], patch_size: Any, level: int | None, mpp: float | None, assume_mpp: float | None,
    stride: Any, min_tissue: Any, annotations: Any, mask: Any, keep: str | None, max_patches: Any,
) -> tuple[int, int | None]:
    """Every option of :func:`extract`, checked once before any slide: (patch size, level; None: ``mpp`` picks).

    Raises :class:`PatchError` (or :class:`AnnotationError` for a missing annotation path).
    """
    if not paths:
        raise PatchError("no slides given")
    size, _ = check_grid_options(patch_size, stride, min_tissue, max_patches)
    keep_label(keep, annotations)
    if isinstance(annotations, (str, os.PathLike)) and not Path(annotations).exists():
        raise AnnotationError(f"{annotations}: no such annotation file or folder")
    _check_mask(mask, len(paths))
    level = norm_level(level, mpp)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise PatchError(f"--mpp must be a positive number of microns per pixel, got {mpp:g}")
    check_assume_mpp(assume_mpp)
    return size, level


class _Notes:
    """Where a run's lines go, above the progress bar: notes to ``log``, slide errors to ``on_error``.

    Every error is also kept in :attr:`errors` (``extract`` raises the first when there is no ``on_error``).
    """

    def __init__(self, log: Callable[[str], None], on_error: Callable[[AeutilsError], None] | None):
        self.log, self.on_error = log, on_error
        self.errors: list[AeutilsError] = []

    def say(self, msg: str) -> None:
        """A warning or a slide's summary line."""
        from tqdm.auto import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            self.log(msg)

    def fail(self, err: AeutilsError) -> None:
        """A slide that cannot be (fully) extracted; the others go on."""
        from tqdm.auto import tqdm

        self.errors.append(err)
        if self.on_error is not None:
            with tqdm.external_write_mode(file=sys.stderr):
                self.on_error(err)


class _Run:
    """The slides' tasks on a pool of ``workers`` processes (1: run inline), filling ``folder``.

    Steps, in order: :meth:`queue` each slide, :meth:`collect` the results, :meth:`close` (always).
    """

    def __init__(self, folder: OutFolder, notes: _Notes, workers: int, progress: bool):
        from tqdm.auto import tqdm

        self.folder, self.notes = folder, notes
        self.pool = start_pool(workers) if workers > 1 else None  # fork now, before any slide is open here
        self.queued: list[tuple[SlidePlan, Task, Any]] = []  # (plan, task, AsyncResult or None: run inline)
        self.left: dict[str, int] = {}  # slide -> tasks not finished yet
        self.bar = tqdm(total=0, desc="patches", unit="patches", disable=not progress, dynamic_ncols=True,
                        file=sys.stderr)

    def queue(self, plan_of: Callable[[Path], SlidePlan], path: Path, overwrite: bool) -> None:
        """Plan slide ``path``, keep its finished patches, queue the rest on the pool, then draw its QC
        figure while the pool works. A slide that cannot be planned or admitted goes to ``notes.fail``."""
        try:
            plan = plan_of(path)
            if plan.scale is not None and plan.scale.mpp is None:
                self.notes.say(f"warning: {plan.scale.describe()}")
            pending = self.folder.admit(plan, overwrite)
        except AeutilsError as err:
            self.notes.fail(err)
            return
        self.bar.total += len(plan.cells)
        self.bar.update(len(plan.cells) - len(pending))
        tasks = blocks(plan, self.folder.out, pending)
        self.left[plan.name] = len(tasks)
        pool = self.pool
        self.queued.extend((plan, t, None if pool is None else pool.apply_async(run_task, (t,))) for t in tasks)
        save_qc(plan, self.folder.qc_path(plan.name))
        plan.thumbnail = plan.thumbnail[:0]  # free memory; the QC figure is done
        if not tasks:
            self.notes.say(self.folder.summary(plan))

    def collect(self) -> None:
        """Take the tasks' results in order (a failed slide's other tasks are waited for and dropped);
        rewrite the manifest now and then."""
        self.bar.refresh()
        last_write, every = time.monotonic(), MANIFEST_EVERY_S
        for plan, task, res in self.queued:
            if plan.name in self.folder.failed:
                if res is not None:
                    res.wait()
                continue
            self.bar.set_postfix_str(plan.name, refresh=False)
            self._record(plan, task, res.get() if res is not None else run_task(task))
            if time.monotonic() - last_write > every:
                t0 = time.monotonic()
                self.folder.write()
                last_write = time.monotonic()
                # Big runs (hundreds of slides): keep the periodic rewrite under ~5 % of the time.
                every = max(MANIFEST_EVERY_S, 20 * (last_write - t0))

    def _record(self, plan: SlidePlan, task: Task, result: TaskResult) -> None:
        """One task's PNGs into the folder's record; its slide's summary once the slide is done."""
        self.folder.record(plan.name, task.paths(), result.sizes)
        self.bar.update(len(result.sizes))
        if result.error is not None:
            self.folder.failed.add(plan.name)
            self.notes.fail(result.error)
            return
        self.left[plan.name] -= 1
        if self.left[plan.name] == 0:
            self.notes.say(self.folder.summary(plan))

    def close(self, completed: bool) -> Path:
        """Stop the pool and close the slides; if the run ``completed``, remove what failed slides wrote.
        Writes the manifest of what is finished (Ctrl-C included) and returns its path."""
        self.bar.close()
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        close_handles()
        if completed:
            self.folder.remove_failed()
        return self.folder.write()
