""":func:`encode_slide`: one slide to its encoding map, a short procedure over the other modules.

Steps: choose the scale and the model, lay the grid; stop if the maps on disk already match the
settings; pick the tissue cores; resume the work folder; encode the missing cores into it; take the
whole-slide statistics; write the TIFF(s) from the work folder; remove it.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from aeutils.errors import AeutilsError, CheckpointError, SlideError
from aeutils.io import folder_lock, remove_temp_files
from aeutils.slidemap.geometry import STRIDE, TileGrid, latent_mask, tile_margin, tissue_tiles
from aeutils.slidemap.pyramid import FORMAT, TIFF_TILE, CellReader, read_settings, write_pyramid
from aeutils.slidemap.sources import SlideSource, mask_side, readers_closed
from aeutils.slidemap.stats import MapStats, check_view, to_uint8
from aeutils.slidemap.store import WorkStore
from aeutils.slidemap.tiles import TileEncoder, read_jobs

if TYPE_CHECKING:  # pragma: no cover
    from aeutils.model import Autoencoder

ENCODING_SUFFIX, RECONSTRUCTION_SUFFIX = ".encoding.tiff", ".reconstruction.tiff"
Tile = tuple[int, int]


@dataclass
class SlideMap:
    """What :func:`encode_slide` did. Paths; ``mpp`` of the input scale (um/px, None if unknown; the
    map's is 4x); ``shape`` of the map (h, w latent px); ``tiles`` cores with tissue,
    ``encoded`` of them encoded by this call (the rest resumed); ``megapixels`` input Mpx encoded by
    this call; ``seconds`` of encoding; ``stats`` over the tissue; ``up_to_date`` if nothing was done;
    ``speed`` the :mod:`aeutils.speed` choice the tiles ran under (its :meth:`~aeutils.speed.Choice.describe`);
    ``reader`` how the slide's pixels were read (:attr:`SlideSource.reader`)."""

    encoding: Path
    reconstruction: Path | None
    mpp: float | None
    shape: tuple[int, int]
    tiles: int
    encoded: int
    megapixels: float
    seconds: float
    stats: MapStats | None = None
    up_to_date: bool = False
    speed: str = ""
    reader: str = ""

    @property
    def mpx_per_s(self) -> float:
        """Input megapixels encoded per second by this call."""
        return self.megapixels / self.seconds if self.seconds > 0 else float("nan")


def model_for(model: "Autoencoder | str | os.PathLike[str] | None", device: Any = None) -> "Autoencoder":
    """The model to encode with, in eval mode on ``device`` (:func:`aeutils.device.pick_device`; a
    given model on another device is copied, never moved). :class:`CheckpointError` for a bad
    checkpoint or one whose encoding is not a single channel."""
    import copy

    from aeutils.checkpoint import load_model
    from aeutils.device import pick_device

    given = not (model is None or isinstance(model, (str, os.PathLike)))
    ae = load_model(model, map_location="cpu")
    if ae.config.latent_channels != 1:
        where = model if isinstance(model, (str, os.PathLike)) else "the model"
        raise CheckpointError(
            f"{where}: checkpoint is for another architecture: latent_channels {ae.config.latent_channels} "
            f"(an encoding map needs a 1-channel encoding)"
        )
    dev = pick_device(device, quiet=True) if (device is not None or not given) else next(ae.parameters()).device
    if next(ae.parameters()).device != dev:
        ae = copy.deepcopy(ae).to(dev) if given else ae.to(dev)
    if given and ae.training:  # BatchNorm must use its running statistics: an eval-mode copy
        ae = copy.deepcopy(ae).eval()
    return ae.eval() if not given else ae


def _model_digest(model: "Autoencoder") -> str:
    from aeutils.checkpoint import weights_digest

    return weights_digest(model.state_dict())


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def check_encode_options(view: str, low: float, high: float, core: int, batch_size: int | None = None) -> None:
    """One-line :class:`AeutilsError` for a bad view, percentiles, tile core (px) or batch size."""
    check_view(view, low, high)
    if core < STRIDE or core % TIFF_TILE:
        raise AeutilsError(f"tile core must be a positive multiple of {TIFF_TILE} px, got {core}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise AeutilsError(f"--batch-size must be a positive number of tiles per forward pass, got {batch_size!r}")


def check_out_folder(out: Path) -> None:
    """:class:`AeutilsError` when ``--out`` is an existing file (maps go into a folder)."""
    if out.exists() and not out.is_dir():
        raise AeutilsError(f"{out}: --out is an existing file, not a folder")


#: What a finished map's settings say about its pixels, by the option that sets them (``final`` keys).
_MAP_SETTINGS = {
    "--view": ("view",), "--percentiles": ("low", "high"), "--checkpoint": ("model", "config"),
    "scale (--level/--mpp/--assume-mpp)": ("level", "factor", "mpp", "mpp_source", "input_size"),
    "slide file": ("slide", "slide_bytes"), "--resample-filter": ("resample_filter",),
}


def map_differences(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What makes the finished map with settings ``old`` (:func:`read_settings`; None: a file that is
    not a map of ``encode``) another map than ``new`` would be: ``["--view stretch (now raw)", ...]``;
    ``[]`` when only the tiling, the work settings or ``--reconstruction`` differ (the same pixels)."""
    if old is None:
        return ["not a map written by encode"]
    if old.get("factor", 1.0) != 1.0 and "resample_filter" not in old:
        old = {**old, "resample_filter": "area"}  # resampled before the key existed: area was the only filter
    diffs = []
    for option, keys in _MAP_SETTINGS.items():
        if any(old.get(k) != new.get(k) for k in keys):
            if option == "--checkpoint":
                diffs.append("another --checkpoint (model weights differ)")
            else:
                was = " ".join(f"{old.get(k)}" for k in keys)
                now = " ".join(f"{new.get(k)}" for k in keys)
                diffs.append(f"{option} {was} (now {now})")
    return diffs


def _run_settings(slide: Any, choice: Any, grid: TileGrid, model: "Autoencoder", reconstruction: bool) -> dict[str, Any]:
    """What the work folder's cores depend on: the slide file, the input scale, the tiling and the model."""
    st = slide.path.stat()
    return {
        "format": FORMAT, "slide": slide.path.name, "slide_bytes": st.st_size, "slide_mtime_ns": st.st_mtime_ns,
        "level": choice.level, "factor": choice.factor, "mpp": choice.mpp, "mpp_source": choice.mpp_source,
        "input_size": [grid.width, grid.height], "core": grid.core, "margin": grid.margin,
        "model": _model_digest(model), "config": model.config.to_dict(), "reconstruction": reconstruction,
        **({"resample_filter": choice.filter} if choice.resampled else {}),  # maps of unresampled levels unchanged
    }


def _tissue(slide: Any, grid: TileGrid, ds: float) -> tuple[Any, list[Tile]]:
    """The slide's tissue mask (:func:`aeutils.tissue.detect_tissue`) and the cores touching it;
    :class:`SlideError` if there are none."""
    from aeutils.tissue import detect_tissue

    _, tissue = detect_tissue(slide, mask_side(slide))
    if not tissue.mask.any():
        raise SlideError(f"{slide.path}: no tissue found (the tissue mask of the thumbnail is empty)")
    tiles = tissue_tiles(tissue, grid, ds)
    if not tiles:
        raise SlideError(f"{slide.path}: no tissue found (no {grid.core} px tile touches the tissue mask)")
    return tissue, tiles


def _encode_into(store: WorkStore, encoder: TileEncoder, source: SlideSource, grid: TileGrid, todo: Sequence[Tile],
                 tissue: Any, ds: float, run: int, progress: bool,
                 on_tile: Callable[[int, int], None] | None) -> None:
    """Encode the cores ``todo`` and save each one's mask, latents (and reconstruction, background
    white) to ``store`` as it finishes, with a progress bar in input Mpx."""
    from tqdm.auto import tqdm

    bar = tqdm(total=round(grid.core_megapixels(list(todo)), 3), desc=source.name, unit="Mpx", disable=not progress,
               dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} Mpx "
                                              "[{elapsed}<{remaining}, {rate_noinv_fmt}]")
    try:
        for ty, tx, z, r in encoder.run(read_jobs(source, grid, todo, run)):
            m = latent_mask(tissue, grid, ty, tx, ds)
            store.save("m", ty, tx, m)
            if r is not None:  # background white, at the mask's latent resolution
                r[~np.repeat(np.repeat(m, STRIDE, 0), STRIDE, 1)[: r.shape[0], : r.shape[1]]] = 255
                store.save("r", ty, tx, r)
            store.save("z", ty, tx, z)
            x0, y0, x1, y1 = grid.core_box(ty, tx)
            bar.update(round((x1 - x0) * (y1 - y0) / 1e6, 6))
            if on_tile is not None:
                on_tile(ty, tx)
    finally:
        bar.close()


def _encoding_cells(store: WorkStore, tiles: Sequence[Tile], stats: MapStats, view: str, low: float,
                    high: float) -> dict[Tile, CellReader]:
    """Per core, a reader of its grey levels (uint8 latent h x w; background 0) for the TIFF writer."""
    def cell(t: Tile) -> CellReader:
        def get() -> np.ndarray:
            z, m = store.load("z", *t), store.load("m", *t)
            v = to_uint8(stats.view(z, view, low, high))
            v[~m] = 0
            return v
        return get

    return {t: cell(t) for t in tiles}


def _write_maps(store: WorkStore, tiles: Sequence[Tile], grid: TileGrid, stats: MapStats, mpp: float | None,
                enc_path: Path, rec_path: Path | None, final: dict[str, Any]) -> None:
    """The encoding TIFF (grey, zlib, ``4 * mpp`` um/px) and, with ``rec_path``, the reconstruction
    TIFF (RGB, JPEG, ``mpp``), assembled core by core from ``store``; ``final`` is their description."""
    description = json.dumps(final, sort_keys=True)
    lh, lw = grid.latent_shape
    cells = _encoding_cells(store, tiles, stats, final["view"], final["low"], final["high"])
    write_pyramid(enc_path, lw, lh, 1, grid.core // STRIDE, cells, 0, None if mpp is None else mpp * STRIDE,
                  description, "zlib")
    if rec_path is not None:
        write_pyramid(rec_path, grid.width, grid.height, 3, grid.core,
                      {t: (lambda t=t: store.load("r", *t)) for t in tiles}, 255, mpp, description, "jpeg")


def encode_slide(
    slide: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: "Autoencoder | str | os.PathLike[str] | None" = None,
    level: int | None = None,
    mpp: float | None = None,
    assume_mpp: float | None = None,
    resample_filter: str | None = None,
    view: str = "stretch",
    low: float = 2.0,
    high: float = 98.0,
    reconstruction: bool = False,
    core: int = 768,
    run: int = 8,
    batch_size: int | None = None,
    precision: str | None = None,
    device: str | None = None,
    progress: bool = True,
    keep_work: bool = False,
    overwrite: bool = False,
    on_tile: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> SlideMap:
    """Encode one slide's tissue into ``out/<slide>.encoding.tiff`` (and ``.reconstruction.tiff``).

    ``level`` / ``mpp`` / ``assume_mpp`` / ``resample_filter``: the input scale, as ``extract``
    (:func:`aeutils.scale.resolve_scale`; the same reader, so a map pixel sees the patch pixels extract writes).
    ``model``: an Autoencoder, a checkpoint path, or None (the shipped model). ``view``/``low``/``high``:
    the grey levels written (:meth:`MapStats.view`). ``core`` input px per tile (multiple of 256),
    ``run`` tiles per region read, ``batch_size`` tiles per forward pass (default
    :func:`~aeutils.slidemap.tiles.auto_batch_size`), ``precision`` as in
    :class:`~aeutils.slidemap.tiles.TileEncoder`, ``device`` for :func:`aeutils.device.pick_device`.
    ``on_tile(ty, tx)`` is called after each core is saved (tests interrupt there); ``log`` gets the
    one-line notes (default: stderr). A finished map of this slide in ``out`` made with other settings
    (:func:`map_differences`: view, checkpoint, scale) is refused unless ``overwrite``. ``out`` is
    locked while the slide is encoded (:func:`aeutils.io.folder_lock`); temp files of killed writes
    there are removed. Raises :class:`SlideError` (missing, not a slide, no tissue, bad scale, another
    map there), :class:`CheckpointError` (bad checkpoint, another architecture),
    :class:`~aeutils.errors.FolderBusyError` (another process writes to ``out``).
    """
    say = log or _stderr
    check_encode_options(view, low, high, core, batch_size)
    out_dir = Path(out)
    check_out_folder(out_dir)
    with folder_lock(out_dir, "encode"):  # one writer: a second run is refused in one line
        remove_temp_files(out_dir, [_work_name(Path(slide).stem)])  # of killed writes (nobody else writes here)
        return _encode_slide(
            slide, out_dir, model=model, level=level, mpp=mpp, assume_mpp=assume_mpp, resample_filter=resample_filter,
            view=view, low=low, high=high, reconstruction=reconstruction, core=core, run=run, batch_size=batch_size,
            precision=precision, device=device, progress=progress, keep_work=keep_work, overwrite=overwrite,
            on_tile=on_tile, say=say,
        )


def _work_name(name: str) -> str:
    """The work folder of slide ``name`` in the output folder."""
    return f".{name}.encoding.work"


def _encode_slide(slide: str | os.PathLike[str], out_dir: Path, *, model: Any, level: int | None, mpp: float | None,
                  assume_mpp: float | None, resample_filter: str | None, view: str, low: float, high: float,
                  reconstruction: bool, core: int, run: int, batch_size: int | None, precision: str | None,
                  device: str | None, progress: bool, keep_work: bool, overwrite: bool,
                  on_tile: Callable[[int, int], None] | None, say: Callable[[str], None]) -> SlideMap:
    """:func:`encode_slide` once the output folder is locked."""
    from aeutils.scale import resolve_scale
    from aeutils.slides import open_slide

    with open_slide(slide) as s, readers_closed():
        choice = resolve_scale(s, level=level, mpp=mpp, assume_mpp=assume_mpp, filter=resample_filter)
        if choice.mpp is None:
            say(choice.describe())
        ae = model_for(model, device)
        source = SlideSource(s, choice)
        grid = TileGrid(source.width, source.height, core, tile_margin(ae.config, reconstruction))
        enc_path = out_dir / f"{s.name}{ENCODING_SUFFIX}"
        rec_path = out_dir / f"{s.name}{RECONSTRUCTION_SUFFIX}" if reconstruction else None
        settings = _run_settings(s, choice, grid, ae, reconstruction)
        final = {**settings, "view": view, "low": low, "high": high}
        if read_settings(enc_path) == final and (rec_path is None or read_settings(rec_path) == final):
            return SlideMap(enc_path, rec_path, choice.mpp, grid.latent_shape, 0, 0, 0.0, 0.0, None, True)
        for path in (enc_path, rec_path):
            diffs = map_differences(read_settings(path), final) if path is not None and path.exists() else []
            if diffs and not overwrite:
                raise SlideError(f"{path}: a finished map made here with other settings ({'; '.join(diffs)}): "
                                 f"use another --out, or --overwrite to replace it")

        tissue, tiles = _tissue(s, grid, choice.downsample)
        store = WorkStore(out_dir / _work_name(s.name))
        todo = store.todo(tiles, store.start(settings), reconstruction)
        if len(todo) < len(tiles):
            say(f"{s.path}: resuming: {len(tiles) - len(todo)} of {len(tiles)} tiles already encoded")
        t0 = time.perf_counter()
        speed_used = ""
        if todo:
            encoder = TileEncoder(ae, grid, reconstruction=reconstruction, precision=precision,
                                  expected_tiles=len(todo), batch_size=batch_size)
            speed_used = encoder.choice.describe()
            _encode_into(store, encoder, source, grid, todo, tissue, choice.downsample, run, progress, on_tile)
        seconds = time.perf_counter() - t0

    stats = MapStats.from_values(lambda: store.tissue_values(tiles))
    _write_maps(store, tiles, grid, stats, choice.mpp, enc_path, rec_path, final)
    if not keep_work:
        store.remove()
    return SlideMap(enc_path, rec_path, choice.mpp, grid.latent_shape, len(tiles), len(todo),
                    grid.core_megapixels(todo), seconds, stats, speed=speed_used, reader=source.reader)
