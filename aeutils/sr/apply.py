"""x4 super-resolution of whole slides and image folders (``python -m aeutils sr apply``), on the tiling
engine of the encoding maps (:mod:`aeutils.slidemap`: :class:`~aeutils.slidemap.TileGrid` cores and read
boxes, :func:`~aeutils.slidemap.read_jobs` region reads in runs, :class:`~aeutils.slidemap.SlideSource`
pixels at a scale, :class:`~aeutils.slidemap.WorkStore` resumable cores, :func:`~aeutils.slidemap.write_pyramid`
tiled pyramidal TIFFs): one tiler for ``encode`` and ``sr apply``.

* **Seamless.** The generator is fully convolutional and an output pixel depends only on LR pixels within
  :meth:`~aeutils.sr.arch.Generator.receptive_radius`; tiles are read with a margin of at least that
  (rounded up to 4) around each core, clipped at the image edge (so edge tiles see the same zero padding
  as a one-shot run), and only the core's 4x pixels are kept. Tiled equals one-shot up to float noise
  (``tests/test_sr_apply.py``: within 1e-4 across tile borders, fp32; bf16 tiles equal a bf16 one-shot run
  within 1e-3 and differ from fp32 by at most 0.008 (2 grey levels), 0.0007 mean, for the shipped generator).
* **Fast by measurement.** ``--precision auto`` (default): :func:`aeutils.speed.inference_choice` times
  fp32 / channels_last / bf16 / both on one :data:`PROBE_SIDE` px tile (~6 s here, mostly oneDNN's first
  calls) once the slide's tiles are >= 20x the probe's pixels (~1.3 LR Mpx of read tiles), and keeps the
  fastest: channels_last+bf16 on a Xeon with AMX (3-5x fp32), fp32 where bf16 is emulated.
* **The generator's degradation.** A level resampled for ``--mpp`` is read with
  :data:`aeutils.sr.degrade.SLIDE_FILTER` (PIL's antialiased bicubic, what the generator was trained on)
  unless ``--resample-filter`` says otherwise; a pyramid level within 10 % is read as it is.
* **Tissue only, background white.** Cores without tissue (:func:`aeutils.tissue.detect_tissue`) are not
  super-resolved; the TIFF is white there (``tissue_only=False``: every core).
* **Bounded memory, resumable.** Each finished core goes to ``DIR/.<slide>.sr.work/`` at once (atomic
  ``.npy``; the work folder needs ~3 bytes per output pixel of tissue until the TIFF is written, then it
  is removed); the TIFF is assembled tile by tile from there under a temporary name. Memory: a batch of
  tiles' activations (the widest: ``channels`` x (4 x tile side)^2 floats, 69 MB for a 184 px LR tile of
  the cpu preset) plus one TIFF tile row, whatever the slide's size: a 100,000 x 80,000 px slide (a 2,600 x 2,100
  px tissue piece, the rest glass) read at 2 um/px, written as a 100,000 x 80,000 px TIFF with the shipped
  generator, peaked at 1.26 GiB RSS in 52 s (one thread, shared Xeon). Killed (even ``kill -9``), the same
  command continues with the cores not yet saved; other settings restart it.
* ``DIR/<slide>.sr.tiff``: RGB, JPEG tiles (quality 90) of 256 px, a pyramid, resolution tags 4x finer
  than the input scale, so OpenSlide, QuPath and :mod:`aeutils.slides` open it with its mpp.
* A folder of PNG/JPEG images gives ``DIR/<NAME>.png`` at 4x (every pixel; existing outputs are kept).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from aeutils.errors import AeutilsError, CheckpointError, SlideError
from aeutils.io import folder_lock
from aeutils.sr.arch import Generator
from aeutils.sr.degrade import SCALE, SLIDE_FILTER

__all__ = ["SR_SUFFIX", "sr_margin", "TileSR", "super_resolve_image", "super_resolve_tensor", "sr_slide",
           "sr_folder", "SlideSR", "generator_for", "run_apply"]

SR_SUFFIX = ".sr.tiff"
#: LR side of the one tile the speed probe times each candidate on (:class:`TileSR`)
PROBE_SIDE = 64
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def sr_margin(model: Generator) -> int:
    """LR pixels read around each core: the generator's receptive radius rounded up to a multiple of 4."""
    r = model.receptive_radius()
    return -(-r // 4) * 4


def generator_for(checkpoint: str | os.PathLike[str] | Generator | None = None, device: Any = None) -> Generator:
    """The generator to apply, eval mode, on ``device`` (:func:`aeutils.device.pick_device`): a Generator as
    given, a checkpoint path (:func:`aeutils.sr.checkpoint.load_generator`), or None: the shipped one."""
    from aeutils.device import pick_device
    from aeutils.sr.checkpoint import load_generator, load_pretrained_sr

    if isinstance(checkpoint, Generator):
        return checkpoint.eval()
    dev = pick_device(device, quiet=True)
    if checkpoint is None:
        return load_pretrained_sr(dev)
    if not Path(checkpoint).exists():
        raise CheckpointError(f"{checkpoint}: no such checkpoint file")
    return load_generator(checkpoint, dev).model


class TileSR:
    """Super-resolves tiles (``TileJob``: core (ty, tx) and its read box's pixels) of one grid, in batches
    of same-shape tiles, keeping each core's 4x pixels. ``precision``: None (measured,
    :func:`aeutils.speed.inference_choice`) or a candidate name (``"fp32"``: the exact path)."""

    def __init__(self, model: Generator, grid: Any, *, precision: str | None = None, expected_tiles: int = 1,
                 batch_size: int = 4) -> None:
        from aeutils import speed

        self.model, self.grid, self.batch_size = model, grid, max(1, int(batch_size))
        self.device = next(model.parameters()).device
        side = grid.core + 2 * grid.margin
        tiles = (max(1, expected_tiles), 3, min(side, grid.height), min(side, grid.width))
        # the candidates are timed on one small tile (the ranking holds across tile sizes), so the probe
        # costs ~16 such tiles and pays from ~1.3 LR Mpx of tiles on
        probe = (1, 3, min(PROBE_SIDE, grid.height), min(PROBE_SIDE, grid.width))
        self.choice = speed.inference_choice(
            model, tiles, self.device, expected_batches=1, probe_shape=probe,
            run=lambda x, c: speed.forward(model, x, c), force=precision,
        )

    def run_float(self, jobs: Iterator[Any]) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(ty, tx, core 3 x 4h x 4w float32 in [0, 1]) per job (``rgb`` uint8 h x w x 3 or float 3 x h x w)."""
        from aeutils.slidemap.tiles import same_shape_batches

        for batch in same_shape_batches(jobs, self.batch_size):
            yield from self._flush(batch)

    def run(self, jobs: Iterator[Any]) -> Iterator[tuple[int, int, np.ndarray]]:
        """(ty, tx, core 4h x 4w x 3 uint8) per job."""
        for ty, tx, y in self.run_float(jobs):
            yield ty, tx, y.mul_(255).round_().to(torch.uint8).permute(1, 2, 0).numpy()

    def _flush(self, jobs: list[Any]) -> Iterator[tuple[int, int, torch.Tensor]]:
        from aeutils import speed

        g = self.grid
        if isinstance(jobs[0].rgb, np.ndarray):
            x = torch.from_numpy(np.stack([j.rgb for j in jobs])).permute(0, 3, 1, 2).float().div_(255.0)
        else:
            x = torch.stack([j.rgb for j in jobs]).float()
        with torch.inference_mode():
            y = speed.forward(self.model, x.to(self.device), self.choice)
        for i, job in enumerate(jobs):
            rx0, ry0, _, _ = g.read_box(job.ty, job.tx)
            cx0, cy0, cx1, cy1 = g.core_box(job.ty, job.tx)
            ox, oy = SCALE * (cx0 - rx0), SCALE * (cy0 - ry0)  # only the core is clamped and copied back
            yield job.ty, job.tx, y[i, :, oy:oy + SCALE * (cy1 - cy0), ox:ox + SCALE * (cx1 - cx0)].clamp(0, 1).cpu()


class _TensorSource:
    """LR pixels from a 3 x H x W float tensor (for the exact float path)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.height, self.width = x, int(x.shape[-2]), int(x.shape[-1])

    def read(self, x0: int, y0: int, w: int, h: int) -> torch.Tensor:
        return self.x[:, y0:y0 + h, x0:x0 + w]


def _read_jobs_any(source: Any, grid: Any, todo: Sequence[tuple[int, int]], run: int) -> Iterator[Any]:
    """:func:`aeutils.slidemap.read_jobs` for uint8 sources; per-tile reads for a float tensor source."""
    from aeutils.slidemap import TileJob, read_jobs

    if isinstance(source, _TensorSource):
        for ty, tx in todo:
            x0, y0, x1, y1 = grid.read_box(ty, tx)
            yield TileJob(ty, tx, source.read(x0, y0, x1 - x0, y1 - y0))
    else:
        yield from read_jobs(source, grid, todo, run)


def super_resolve_tensor(model: Generator, lr: torch.Tensor, *, core: int = 128, margin: int | None = None,
                         precision: str | None = "fp32", batch_size: int = 4) -> torch.Tensor:
    """Tiled x4 SR of one LR image, 3 x h x w float in [0, 1] -> 3 x 4h x 4w (every core; ``margin`` LR px,
    default :func:`sr_margin`). Equals ``model(lr[None])[0]`` up to float noise."""
    from aeutils.slidemap import TileGrid

    src = _TensorSource(lr)
    grid = TileGrid(src.width, src.height, core, sr_margin(model) if margin is None else margin)
    todo = [(ty, tx) for ty in range(grid.shape[0]) for tx in range(grid.shape[1])]
    out = torch.zeros(3, SCALE * src.height, SCALE * src.width)
    sr = TileSR(model.eval(), grid, precision=precision, expected_tiles=len(todo), batch_size=batch_size)
    for ty, tx, y in sr.run_float(_read_jobs_any(src, grid, todo, 1)):
        x0, y0, x1, y1 = grid.core_box(ty, tx)
        out[:, SCALE * y0:SCALE * y1, SCALE * x0:SCALE * x1] = y
    return out


def super_resolve_image(model: Generator, rgb: np.ndarray, *, core: int = 128, precision: str | None = None,
                        batch_size: int = 4, progress: Any = None) -> np.ndarray:
    """Tiled x4 SR of an in-memory H x W x 3 uint8 image -> 4H x 4W x 3 uint8 (every core)."""
    from aeutils.slidemap import ArraySource, TileGrid

    src = ArraySource(np.ascontiguousarray(rgb))
    grid = TileGrid(src.width, src.height, core, sr_margin(model))
    todo = [(ty, tx) for ty in range(grid.shape[0]) for tx in range(grid.shape[1])]
    out = np.zeros((SCALE * src.height, SCALE * src.width, 3), np.uint8)
    sr = TileSR(model, grid, precision=precision, expected_tiles=len(todo), batch_size=batch_size)
    for ty, tx, y in sr.run(_read_jobs_any(src, grid, todo, 8)):
        x0, y0, x1, y1 = grid.core_box(ty, tx)
        out[SCALE * y0:SCALE * y1, SCALE * x0:SCALE * x1] = y
        if progress is not None:
            progress((x1 - x0) * (y1 - y0) / 1e6)
    return out


@dataclass
class SlideSR:
    """What :func:`sr_slide` did: the TIFF, its mpp (um/px; None if unknown), its size (w, h px), tissue
    cores, cores super-resolved by this call (the rest resumed), LR Mpx and seconds of this call,
    whether it was already up to date, and the speed choice."""

    path: Path
    mpp: float | None
    size: tuple[int, int]
    tiles: int
    done: int
    megapixels: float
    seconds: float
    up_to_date: bool = False
    speed: str = ""

    @property
    def mpx_per_s(self) -> float:
        """LR (input) megapixels super-resolved per second by this call."""
        return self.megapixels / self.seconds if self.seconds > 0 else float("nan")


def _bar(total: float, desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="Mpx", disable=not progress, dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} Mpx [{elapsed}<{remaining}, "
                           "{rate_noinv_fmt}]")


def sr_slide(
    slide: str | os.PathLike[str], out: str | os.PathLike[str], *, model: Generator | str | os.PathLike[str] | None = None,
    level: int | None = None, mpp: float | None = None, assume_mpp: float | None = None,
    resample_filter: str | None = None, core: int = 128,
    run: int = 8, batch_size: int = 4, tissue_only: bool = True, precision: str | None = None,
    device: str | None = None, progress: bool = True, on_tile: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> SlideSR:
    """Super-resolve one slide's tissue x4 into ``out/<slide>.sr.tiff`` (module docstring).

    ``level`` / ``mpp`` / ``assume_mpp``: the input scale, as ``extract`` / ``encode``
    (:func:`aeutils.scale.resolve_scale`); ``resample_filter``: how a resampled level is read (default
    :data:`aeutils.sr.degrade.SLIDE_FILTER`, the generator's training degradation); ``model``: a Generator, a checkpoint path or None (the shipped
    one); ``core``: LR px per tile core (a multiple of 64, so the 4x cells align with 256 px TIFF tiles);
    ``on_tile(ty, tx)`` is called after each core is saved. SlideError / CheckpointError, one line."""
    from aeutils.scale import resolve_scale
    from aeutils.slidemap import SlideSource, TileGrid, WorkStore, read_settings, tissue_tiles, write_pyramid
    from aeutils.slidemap.pyramid import FORMAT
    from aeutils.slidemap.sources import mask_side, readers_closed
    from aeutils.slides import open_slide

    say = log or (lambda t: print(t, file=sys.stderr, flush=True))
    if core < 64 or core % 64:
        raise AeutilsError(f"--tile {core}: must be a positive multiple of 64 LR px")
    g = generator_for(model, device)
    out_dir = Path(out)
    with folder_lock(out_dir, "sr apply"), open_slide(slide) as s, readers_closed():
        choice = resolve_scale(s, level=level, mpp=mpp, assume_mpp=assume_mpp,
                               filter=SLIDE_FILTER if resample_filter is None else resample_filter)
        if choice.mpp is None:
            say(choice.describe())
        source = SlideSource(s, choice)
        grid = TileGrid(source.width, source.height, core, sr_margin(g))
        path = out_dir / f"{s.name}{SR_SUFFIX}"
        st = s.path.stat()
        from aeutils.checkpoint import weights_digest

        settings = {"format": FORMAT, "kind": "sr", "slide": s.path.name, "slide_bytes": st.st_size,
                    "slide_mtime_ns": st.st_mtime_ns, "level": choice.level, "factor": choice.factor,
                    "mpp": choice.mpp, "filter": choice.filter if choice.resampled else None, "input_size": [grid.width, grid.height], "core": core, "margin": grid.margin,
                    "generator": weights_digest(g.state_dict()), "config": g.config.to_dict(),
                    "tissue_only": tissue_only}
        out_mpp = None if choice.mpp is None else choice.mpp / SCALE
        size = (SCALE * grid.width, SCALE * grid.height)
        if read_settings(path) == settings:
            return SlideSR(path, out_mpp, size, 0, 0, 0.0, 0.0, True)
        rows, cols = grid.shape
        if tissue_only:
            from aeutils.tissue import detect_tissue

            _, tissue = detect_tissue(s, mask_side(s))
            tiles = tissue_tiles(tissue, grid, choice.downsample) if tissue.mask.any() else []
            if not tiles:
                raise SlideError(f"{s.path}: no tissue found (pass --all to super-resolve the whole slide)")
        else:
            tiles = [(ty, tx) for ty in range(rows) for tx in range(cols)]
        store = WorkStore(out_dir / f".{s.name}.sr.work")
        resumed = store.start(settings)
        todo = [t for t in tiles if not (resumed and store.has("r", *t))]
        if len(todo) < len(tiles):
            say(f"{s.path}: resuming: {len(tiles) - len(todo)} of {len(tiles)} tiles already super-resolved")
        t0, speed_used = time.perf_counter(), ""
        if todo:
            sr = TileSR(g, grid, precision=precision, expected_tiles=len(todo), batch_size=batch_size)
            speed_used = sr.choice.describe()
            bar = _bar(grid.core_megapixels(todo), s.name, progress)
            try:
                for ty, tx, y in sr.run(_read_jobs_any(source, grid, todo, run)):
                    store.save("r", ty, tx, y)
                    x0, y0, x1, y1 = grid.core_box(ty, tx)
                    bar.update(round((x1 - x0) * (y1 - y0) / 1e6, 6))
                    if on_tile is not None:
                        on_tile(ty, tx)
            finally:
                bar.close()
        seconds = time.perf_counter() - t0
        cells = {t: (lambda t=t: store.load("r", *t)) for t in tiles}
        write_pyramid(path, size[0], size[1], 3, SCALE * core, cells, 255, out_mpp,
                      json.dumps(settings, sort_keys=True), "jpeg")
        store.remove()
    return SlideSR(path, out_mpp, size, len(tiles), len(todo), grid.core_megapixels(todo), seconds, speed=speed_used)


def sr_folder(folder: str | os.PathLike[str], out: str | os.PathLike[str], *,
              model: Generator | str | os.PathLike[str] | None = None, core: int = 128, batch_size: int = 4,
              precision: str | None = None, device: str | None = None, progress: bool = True) -> list[Path]:
    """Every PNG/JPEG directly in ``folder`` super-resolved x4 to ``out/<NAME>.png`` (atomic; an existing
    output is kept, so a killed run continues). The written (or kept) paths."""
    from PIL import Image

    from aeutils.io import atomic_path

    src = Path(folder)
    images = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise AeutilsError(f"{src}: no PNG or JPEG images in this folder")
    out_dir = Path(out)
    if out_dir.exists() and out_dir.resolve() == src.resolve():
        raise AeutilsError(f"{out_dir}: --out is the input folder (its images would count as their own outputs); use another folder")
    stems: dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise AeutilsError(f"{p}: same name as {stems[p.stem].name}, both would be written to {p.stem}.png; rename one")
        stems[p.stem] = p
    g = generator_for(model, device)
    done: list[Path] = []
    sizes = {}
    for p in images:
        try:
            with Image.open(p) as im:
                sizes[p] = im.size
        except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file
            raise AeutilsError(f"{p}: not a readable image ({type(exc).__name__}: {str(exc)[:100]})") from None
    bar = _bar(sum(w * h for w, h in sizes.values()) / 1e6, src.name, progress)
    with folder_lock(out_dir, "sr apply"):  # one writer per output folder
        try:
            for p in images:
                target = out_dir / f"{p.stem}.png"
                if not target.exists():
                    with Image.open(p) as im:
                        rgb = np.asarray(im.convert("RGB"))
                    y = super_resolve_image(g, rgb, core=core, precision=precision, batch_size=batch_size)
                    with atomic_path(target) as tmp:
                        Image.fromarray(y).save(tmp, format="PNG", compress_level=1)
                bar.update(round(sizes[p][0] * sizes[p][1] / 1e6, 6))
                done.append(target)
        finally:
            bar.close()
    return done


def run_apply(args: Any) -> int:
    """``sr apply``: each slide (or image folder) in turn; a failing one prints one ``error: ...`` line and
    the others go on (exit 2)."""
    from aeutils.scale import check_assume_mpp

    check_assume_mpp(args.assume_mpp)
    g = generator_for(args.checkpoint, args.device)  # once: a bad checkpoint fails before any slide
    precision = None if args.precision == "auto" else args.precision
    failed = 0
    for item in args.inputs:
        try:
            if Path(item).is_dir():
                paths = sr_folder(item, args.out, model=g, core=args.tile, batch_size=args.batch_size,
                                  precision=precision, progress=args.progress)
                print(f"{item}: {len(paths)} images x{SCALE} in {args.out}")
                continue
            r = sr_slide(item, args.out, model=g, level=args.level, mpp=args.mpp, assume_mpp=args.assume_mpp,
                         resample_filter=args.resample_filter, core=args.tile, batch_size=args.batch_size, tissue_only=args.tissue_only,
                         precision=precision, progress=args.progress)
        except AeutilsError as err:
            failed += 1
            print(f"error: {err}", file=sys.stderr, flush=True)
            continue
        mpp = f", {r.mpp:.4g} um/px" if r.mpp else ""
        what = ("up to date" if r.up_to_date else
                f"{r.done} of {r.tiles} tissue tiles, {r.megapixels:.2f} LR Mpx at {r.mpx_per_s:.3f} Mpx/s")
        print(f"{r.path} ({r.size[0]} x {r.size[1]} px{mpp}; {what}; background white)")
    return 2 if failed else 0
