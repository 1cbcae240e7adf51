"""The parallel runner: a slide's cells grouped into tasks of strips, run on a process pool.

A task covers about :data:`BLOCK_SIDE` x :data:`BLOCK_SIDE` level pixels; within it each run of
horizontally adjacent cells is one read (a strip one cell tall, plus the resampling filter's margin),
so little outside the kept cells is painted and tiles shared by neighbouring strips come from the
worker's OpenSlide tile cache. Strips of tiled TIFF slides are decoded straight from the tiles where
:mod:`aeutils.tiffread` verified that gives OpenSlide's pixels; resampled, a strip's patches are
resized from one image of the strip where that is bit-identical to per-patch crops
(:func:`aeutils.scale.resample_patches`). Workers (one OpenSlide handle per slide
each) die with the parent, ``kill -9`` included. Never imports torch.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from aeutils.errors import AeutilsError, PatchError, SlideError, one_line
from aeutils.io import atomic_write_bytes
from aeutils.patches.codec import encode_png
from aeutils.patches.grid import GridCell, SlidePlan
from aeutils.scale import ScaleChoice

__all__ = ["BLOCK_SIDE", "Read", "Task", "TaskResult", "blocks", "run_task", "read_level", "start_pool",
           "close_handles", "default_workers"]

#: Side (pixels at the level) of the square a task covers (its strips share tiles through the cache).
BLOCK_SIDE = 2048


class Read(NamedTuple):
    """One read of a task: ``w`` x ``h`` level pixels with top-left level pixel (``x0``, ``y0``), and the
    patches computed from it (:func:`aeutils.scale.resample_patches`)."""

    x0: int
    y0: int
    w: int
    h: int
    patches: list[tuple[int, int, str]]  # (ox, oy, relpath): output-pixel top-left of each patch, its PNG


class Task(NamedTuple):
    """What one pool job does: ``reads`` of ``slide`` at ``level``, cut into ``size`` x ``size`` PNGs under ``out``."""

    slide: str  # slide file
    level: int  # pyramid level read
    size: int  # patch side, output pixels
    out: str  # output folder
    reads: list[Read]
    scale: ScaleChoice  # level read -> output pixels (factor 1: as read)

    def paths(self) -> list[str]:
        """Relative PNG paths the task writes, in the order it writes them."""
        return [rel for r in self.reads for _, _, rel in r.patches]


class TaskResult(NamedTuple):
    """What a task did: the byte size of each PNG written (task order), and why it stopped if it did.

    ``error`` is :class:`SlideError` when the slide's pixels cannot be read, :class:`PatchError` when the
    output folder cannot be written; the PNGs listed in ``sizes`` are whole either way.
    """

    sizes: list[int]
    error: AeutilsError | None = None


def default_workers() -> int:
    """Cores available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))  # type: ignore[attr-defined]
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------------
# reading (in a worker, or inline with one worker)

_HANDLES: dict[str, Any] = {}


def slide_handle(path: str) -> Any:
    """This process's OpenSlide handle of ``path`` (opened once, kept until :func:`close_handles`)."""
    h = _HANDLES.get(path)
    if h is None:
        import openslide

        h = _HANDLES[path] = openslide.OpenSlide(path)
    return h


def close_handles() -> None:
    """Close this process's OpenSlide handles and TIFF tile readers."""
    from aeutils.tiffread import close_readers

    close_readers()
    for h in _HANDLES.values():
        h.close()
    _HANDLES.clear()


def read_level(path: str, level: int, ds: float, bx0: int, by0: int, w: int, h: int) -> np.ndarray:
    """Level pixels ``[bx0, bx0+w) x [by0, by0+h)`` of ``level`` (downsample ``ds``): h x w x 3 uint8,
    exactly ``OpenSlide.read_region((round(bx0*ds), round(by0*ds)), level, (w, h)).convert("RGB")``.

    Decoded from the TIFF tiles when :func:`aeutils.tiffread.tile_reader` verified that gives
    OpenSlide's pixels for this file and level and the region is inside the level at an exact level-0
    position; otherwise (and if a tile fails to decode) painted by OpenSlide, which raises
    ``openslide.OpenSlideError`` for a corrupt file.
    """
    from aeutils import slides
    from aeutils.tiffread import tile_reader

    osr = slide_handle(path)
    x, y = int(round(bx0 * ds)), int(round(by0 * ds))
    reader = tile_reader(path, level, osr)
    if reader is not None and x == bx0 * ds and y == by0 * ds and reader.covers(bx0, by0, w, h):
        try:
            return reader.read(bx0, by0, w, h)
        except Exception:  # a bad tile: OpenSlide reads it (or names the problem)
            pass
    return slides.read_rgb(osr, x, y, level, w, h)


def run_task(task: Task) -> TaskResult:
    """Do one task's reads, cut/resample their patches, write the PNGs."""
    sizes: list[int] = []
    try:
        import openslide

        from aeutils.scale import resample_patches

        root = Path(task.out)
        for folder in {rel.rpartition("/")[0] for rel in task.paths()}:
            (root / folder).mkdir(parents=True, exist_ok=True)
        ds = task.scale.level_downsample
        for r in task.reads:
            try:
                # One read per strip; each patch is then what a read of its own would give.
                region = read_level(task.slide, task.level, ds, r.x0, r.y0, r.w, r.h)
            except openslide.OpenSlideError as exc:
                why = f"cannot read pixels ({one_line(exc)}); truncated or corrupt file?"
                return TaskResult(sizes, SlideError(f"{task.slide}: {why}"))
            pixels = resample_patches(task.scale, region, r.x0, r.y0, [(ox, oy) for ox, oy, _ in r.patches],
                                      task.size, task.size)
            for (ox, oy, rel), rgb in zip(r.patches, pixels):
                data = encode_png(rgb)
                # No fsync per patch (thousands of small files): the rename alone makes a kill -9 leave
                # whole PNGs or none, which is what resume relies on; it does not guard a power cut.
                atomic_write_bytes(root / rel, data, fsync=False)
                sizes.append(len(data))
        return TaskResult(sizes)
    except OSError as exc:
        return TaskResult(sizes, PatchError(f"{task.out}: cannot write patches ({exc.strerror or exc})"))


# ---------------------------------------------------------------------------------------------------
# the pool


def _pool_init(parent: int) -> None:
    """Worker start-up: one OpenMP thread, Ctrl-C left to the parent, and death with the parent.

    On Linux ``PR_SET_PDEATHSIG`` kills the worker the moment its parent dies (``kill -9`` too), so no
    worker goes on writing into a folder nobody manages, nor prints a ``BrokenPipeError`` traceback.
    """
    import signal

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def start_pool(workers: int) -> Any:
    """A pool of ``workers`` processes that die with this one (``multiprocessing.Pool``).

    Forks on Linux: fast to start and needs no ``if __name__ == "__main__"`` guard in the caller's
    script (fork before any slide is open here); spawns elsewhere.
    """
    import multiprocessing as mp

    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return mp.get_context(method).Pool(workers, initializer=_pool_init, initargs=(os.getpid(),))


# ---------------------------------------------------------------------------------------------------
# cells -> tasks


def _src_box(choice: ScaleChoice, ox: int, oy: int, size: int) -> tuple[int, int, int, int]:
    from aeutils.scale import source_box

    return source_box(choice, ox, oy, size, size) if choice.resampled else (ox, oy, ox + size, oy + size)


def blocks(plan: SlidePlan, out: Path, todo: list[GridCell]) -> list[Task]:
    """Group cells into tasks of about BLOCK_SIDE x BLOCK_SIDE level pixels, row-major.

    Within a task, each run of horizontally adjacent cells is one read (a strip one cell tall, plus
    the resampling filter's margin), so little outside the kept cells is painted, and tiles shared by
    neighbouring strips come from the worker's OpenSlide tile cache instead of being decoded again. At
    levels whose downsample is not an integer, cells are read one by one (OpenSlide maps level-0 to
    level coordinates by division, so only single reads are guaranteed to equal ``read_region``).
    """
    choice = plan.scale
    if choice is None:  # a plan made by hand: the level as is
        choice = ScaleChoice(plan.level, 1.0, plan.mpp, None, plan.downsample, (10**9, 10**9))
    lds, D, size, stride = choice.level_downsample, choice.downsample, plan.size, plan.stride
    merge = (plan.level == 0 or float(lds).is_integer()) and stride <= size
    per = max(1, BLOCK_SIDE // max(1, round(stride * choice.factor)))
    groups: dict[tuple[int, int], list[tuple[int, int, GridCell]]] = {}
    for c in todo:
        ox, oy = round(c.x / D), round(c.y / D)
        groups.setdefault(((oy // stride) // per, (ox // stride) // per), []).append((oy, ox, c))
    tasks = []
    for key in sorted(groups):
        reads: list[Read] = []
        run: list[tuple[int, int, GridCell]] = []

        def flush() -> None:
            if run:
                oy0, ox0, _ = run[0]
                bx0, by0, _, by1 = _src_box(choice, ox0, oy0, size)
                bx1 = _src_box(choice, run[-1][1], oy0, size)[2]
                patches = [(ox, oy, c.relpath(plan.name)) for oy, ox, c in run]
                reads.append(Read(bx0, by0, bx1 - bx0, by1 - by0, patches))
                run.clear()

        for oy, ox, c in sorted(groups[key], key=lambda t: (t[0], t[1])):
            if not (merge and run and run[-1][0] == oy and ox - run[-1][1] == stride):
                flush()
            run.append((oy, ox, c))
        flush()
        tasks.append(Task(str(plan.path), plan.level, size, str(out), reads, choice))
    return tasks
