"""A whole slide through the encoder: a seamless encoding map as a tiled pyramidal TIFF (the ``encode`` command).

``python -m aeutils encode SLIDE... --out DIR`` writes ``DIR/<slide>.encoding.tiff``: the 1-channel
encoding of the slide's tissue (background 0), 4x coarser than the input scale (about W/4 x H/4 px
for level 0), 8-bit grey, tiled (256 px), zlib, with a pyramid (each level half the previous) and
resolution tags (4 x the input um/px), so OpenSlide, QuPath and :mod:`aeutils.slides` open it with
its mpp. ``--reconstruction`` also writes ``<slide>.reconstruction.tiff``, the decoded RGB at the
input scale (JPEG tiles, background white).

How (all sizes in *input pixels*: pixels at the scale chosen by :mod:`aeutils.scale`):

* **Seamless.** The encoder is fully convolutional (:meth:`~aeutils.model.Autoencoder.encoder_forward`
  takes any size); latent pixel ``j`` is centred on input pixel ``4j`` and depends only on input
  pixels within half the receptive field (:func:`aeutils.introspect.receptive_field`). So the slide
  is cut into *cores* of ``core`` px (a multiple of 4) read with a ``margin`` (:func:`encoder_margin`,
  >= half the receptive field, a multiple of 4) on each side, clipped at the slide's edges; only the
  core's latents are kept. The map equals the one-shot encoding of the whole image up to float noise
  (``tests/test_slidemap.py``). With ``--reconstruction`` the margin grows by the decoder's reach
  (:func:`decoder_margin`) so the decoded core is seamless too.
* **Tissue only.** Cores without tissue (:func:`aeutils.tissue.detect_tissue`) are skipped; latent
  pixels outside the mask are background in the views and excluded from their statistics.
* **Fast and bounded.** Each row of cores is read in runs of up to ``run`` neighbouring tissue cores
  (one region read each, like extraction's strips), encoded in batches of same-shape tiles under the
  CPU/GPU speed choice of :func:`aeutils.speed.inference_choice` (bf16 where it measures faster;
  ``precision="fp32"`` forces the exact path), and each finished core is saved at once to a work
  folder ``DIR/.<slide>.encoding.work/`` (one ``.npy`` per core). Memory holds a few tiles, never the map.
* **Views** (:data:`VIEWS`): ``raw`` (min-max), ``stretch`` (``low``-``high`` percentiles,
  ``skimage.exposure.rescale_intensity``) and ``equalize`` (histogram equalisation, the CDF over
  4096 bins as ``skimage.exposure.equalize_hist`` computes it), with the minimum, maximum, percentiles
  and histogram taken over the **whole slide's tissue** (:class:`MapStats`), so contrast is the same
  in every tile. The TIFF is then assembled tile by tile from the work folder.
* **Resume.** The work folder records the run's settings (slide, scale, model digest, tiling);
  rerunning the same command continues where it stopped, other settings restart it. The TIFF is
  written to a temporary name and renamed when complete: never a half-written file under the final
  name. A finished map whose settings match is left as is ("up to date").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from aeutils.errors import AeutilsError, CheckpointError, SlideError
from aeutils.io import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from aeutils.model import Autoencoder, AutoencoderConfig

#: encoding views of the map (as in :mod:`aeutils.viz`, with whole-slide statistics)
VIEWS: tuple[str, ...] = ("raw", "stretch", "equalize")
#: input pixels per encoding pixel
STRIDE = 4
#: side of the TIFF tiles, in pixels of the image written
TIFF_TILE = 256
#: histogram bins of :class:`MapStats` (percentiles), and the bins equalisation uses (as aeutils.viz)
STAT_BINS, EQ_BINS = 65536, 4096
#: version of the work-folder / TIFF settings record
FORMAT = "mscopy-ae-slidemap/1"
ENCODING_SUFFIX, RECONSTRUCTION_SUFFIX = ".encoding.tiff", ".reconstruction.tiff"


# --------------------------------------------------------------------------------------------- geometry
def _round_up(v: float, m: int) -> int:
    return int(math.ceil(v / m) * m)


def encoder_margin(config: "AutoencoderConfig") -> int:
    """Input pixels of context needed on each side of a core: half the encoder's receptive field
    (:func:`aeutils.introspect.receptive_field`), rounded up to a multiple of 4 (the latent stride)."""
    from aeutils.introspect import receptive_field

    return _round_up((receptive_field(config) - 1) / 2, STRIDE)


def decoder_margin(config: "AutoencoderConfig") -> int:
    """Latent pixels of context the decoder needs around a core: one per (transposed) convolution
    (each reaches at most one latent pixel, the upsampled ones less), plus one."""
    import torch
    from torch import nn

    from aeutils.model import Autoencoder

    with torch.device("meta"):
        model = Autoencoder(config)
    return 1 + sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.decoder.modules())


@dataclass(frozen=True)
class TileGrid:
    """Cores of ``core`` px (multiple of 4) over a ``width`` x ``height`` px image, read with
    ``margin`` px (multiple of 4) of context on each side, clipped to the image."""

    width: int
    height: int
    core: int = 1024
    margin: int = 32

    def __post_init__(self) -> None:
        if self.core < STRIDE or self.core % STRIDE or self.margin < 0 or self.margin % STRIDE:
            raise ValueError(f"core ({self.core}) and margin ({self.margin}) must be multiples of {STRIDE}, core > 0")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"empty image ({self.width} x {self.height} px)")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of cores."""
        return -(-self.height // self.core), -(-self.width // self.core)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(height, width) of the whole encoding map: ceil(H/4) x ceil(W/4) latent pixels."""
        return -(-self.height // STRIDE), -(-self.width // STRIDE)

    def core_box(self, ty: int, tx: int) -> tuple[int, int, int, int]:
        """Input pixels (x0, y0, x1, y1) of core (ty, tx), exclusive ends."""
        x0, y0 = tx * self.core, ty * self.core
        return x0, y0, min(x0 + self.core, self.width), min(y0 + self.core, self.height)

    def read_box(self, ty: int, tx: int) -> tuple[int, int, int, int]:
        """Input pixels (x0, y0, x1, y1) read for core (ty, tx): the core plus ``margin``, clipped."""
        x0, y0, x1, y1 = self.core_box(ty, tx)
        m = self.margin
        return max(0, x0 - m), max(0, y0 - m), min(self.width, x1 + m), min(self.height, y1 + m)

    def latent_box(self, ty: int, tx: int) -> tuple[int, int, int, int]:
        """Latent pixels (x0, y0, x1, y1) of core (ty, tx) in the whole map."""
        x0, y0, x1, y1 = self.core_box(ty, tx)
        return x0 // STRIDE, y0 // STRIDE, -(-x1 // STRIDE), -(-y1 // STRIDE)


# --------------------------------------------------------------------------------------------- pixel sources
class ArraySource:
    """Input pixels from an in-memory H x W x 3 uint8 image (tests, notebooks)."""

    def __init__(self, rgb: np.ndarray, mpp: float | None = None, name: str = "image") -> None:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 image, got {rgb.shape} {rgb.dtype}")
        self.rgb, self.mpp, self.name = rgb, mpp, name
        self.width, self.height = int(rgb.shape[1]), int(rgb.shape[0])

    def read(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """h x w x 3 uint8 input pixels from (x0, y0)."""
        return self.rgb[y0:y0 + h, x0:x0 + w]


class SlideSource:
    """Input pixels of an open :class:`~aeutils.slides.Slide` at a :class:`~aeutils.scale.ScaleChoice`
    (a level as is, or resampled from the next finer one, as :func:`aeutils.scale.read_scaled`).

    The level's pixels are decoded straight from the TIFF tiles where :func:`aeutils.tiffread.tile_reader`
    verified that gives OpenSlide's pixels for this file and level (tiled .tif / .svs; ~6 vs 20-45 ns
    per pixel for OpenSlide's painting), else read by OpenSlide; either way the result is exactly
    ``read_scaled``'s. ``reader`` says which (one line).
    """

    def __init__(self, slide: Any, choice: Any) -> None:
        from aeutils import tiffread

        self.slide, self.choice = slide, choice
        self.mpp: float | None = choice.mpp
        self.name: str = slide.name
        self.width, self.height = (int(v) for v in choice.output_dimensions)
        self._tiles = tiffread.tile_reader(slide.path, choice.level, slide._handle())
        self.reader: str = ("tile decoding (verified identical to OpenSlide)" if self._tiles is not None
                            else f"OpenSlide ({tiffread.why_not(slide.path, choice.level)})")

    def read(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """h x w x 3 uint8 input pixels from input pixel (x0, y0)."""
        from aeutils.scale import read_scaled, resample_region, source_box

        c = self.choice
        bx0, by0, bx1, by1 = source_box(c, x0, y0, w, h) if c.resampled else (x0, y0, x0 + w, y0 + h)
        if self._tiles is not None and self._tiles.covers(bx0, by0, bx1 - bx0, by1 - by0):
            try:
                region = self._tiles.read(bx0, by0, bx1 - bx0, by1 - by0)
            except Exception:  # a bad tile: OpenSlide reads it, or names the problem
                return read_scaled(self.slide, c, x0, y0, w, h)
            return resample_region(c, region, bx0, by0, x0, y0, w, h)
        return read_scaled(self.slide, c, x0, y0, w, h)


# --------------------------------------------------------------------------------------------- the tile loop
@dataclass
class _Job:
    ty: int
    tx: int
    rgb: np.ndarray  # the read box's pixels


def _runs(cols: Sequence[int], run: int) -> list[list[int]]:
    """Consecutive columns grouped in runs of at most ``run``."""
    out: list[list[int]] = []
    for c in cols:
        if out and c == out[-1][-1] + 1 and len(out[-1]) < run:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def _read_jobs(source: Any, grid: TileGrid, todo: Sequence[tuple[int, int]], run: int) -> Iterator[_Job]:
    """Read the tiles of ``todo`` (row-major (ty, tx)) in runs of neighbouring cores: one region read per run."""
    rows: dict[int, list[int]] = {}
    for ty, tx in todo:
        rows.setdefault(ty, []).append(tx)
    for ty in sorted(rows):
        for cols in _runs(sorted(rows[ty]), run):
            bx0, by0, _, by1 = grid.read_box(ty, cols[0])
            bx1 = grid.read_box(ty, cols[-1])[2]
            strip = source.read(bx0, by0, bx1 - bx0, by1 - by0)
            for tx in cols:
                x0, y0, x1, y1 = grid.read_box(ty, tx)
                yield _Job(ty, tx, np.ascontiguousarray(strip[:, x0 - bx0:x1 - bx0]))


#: bytes the widest encoder activation of one batch may take (float32), per device type. On the CPU a
#: batch must stay cache-sized: measured on 2 EPYC cores (shipped model, fp32), one 576 px tile ran at
#: 5.0 Mpx/s, a batch of four 1.4, and one 1096 px tile 1.25 (its 38 MB stage-1 activation spills
#: the cache). Cores of 768 px (832 px tiles, 22 MB at stage 1) still fit: end to end on a sparse
#: 62 Mpx slide (bench/encode_slide.py's, 2 interleaved runs each, load ~5.5) they took 14.3 s CPU vs
#: 17.1 s for 512 px cores (fp32; 0.73 vs 1.02 CPU s per encoded Mpx: 17 % overlap instead of 27 %,
#: half the tiles' fixed costs). On a GPU, big batches fill the device (the peak is a few times this).
ACTIVATION_BUDGET = {"cpu": 16 * 2**20, "cuda": 1024 * 2**20}


def auto_batch_size(config: "AutoencoderConfig", grid: TileGrid, device: str = "cpu") -> int:
    """Tiles per forward pass so that the widest activation (stage 1: ``widths[0]`` channels at half
    the tile side) of a batch fits :data:`ACTIVATION_BUDGET` of the ``device`` type; at least 1."""
    side = min(grid.core + 2 * grid.margin, max(grid.width, grid.height))
    one = config.widths[0] * (-(-side // 2)) ** 2 * 4
    return max(1, int(ACTIVATION_BUDGET.get(device, ACTIVATION_BUDGET["cpu"]) // one))


class TileEncoder:
    """Encodes tiles (and decodes their cores with ``reconstruction``) for one model and grid.

    ``precision``: ``None`` (the measured :func:`aeutils.speed.inference_choice`), or a candidate
    name of :data:`aeutils.speed.CANDIDATES` (``"fp32"``: the exact path).
    """

    def __init__(self, model: "Autoencoder", grid: TileGrid, *, reconstruction: bool = False,
                 precision: str | None = None, expected_tiles: int = 1, batch_size: int | None = None) -> None:
        import torch

        from aeutils import speed

        self.model, self.grid, self.reconstruction = model, grid, reconstruction
        self.device = next(model.parameters()).device
        self.batch_size = (max(1, int(batch_size)) if batch_size is not None
                           else auto_batch_size(model.config, grid, self.device.type))
        self.dmargin = decoder_margin(model.config) if reconstruction else 0
        # The speed probe times batches of this run's own tile shape; aeutils.speed runs it only once
        # the run's batches make it cheap (a 7 s probe on a 2-core EPYC), i.e. on large slides.
        side = min(grid.core + 2 * grid.margin, max(grid.width, grid.height))
        probe = (min(self.batch_size, max(1, expected_tiles)), 3, min(side, grid.height), min(side, grid.width))
        units = max(1, expected_tiles // probe[0])
        self.choice = speed.inference_choice(
            model, probe, self.device, expected_batches=max(1, units),
            run=lambda x, c: speed.forward(lambda t: model.encoder_forward(t)[0], x, c), force=precision,
        )
        self._torch = torch

    def run(self, jobs: Iterator[_Job]) -> Iterator[tuple[int, int, np.ndarray, np.ndarray | None]]:
        """(ty, tx, latent core float32 h x w, reconstruction core uint8 H x W x 3 or None) per job,
        batching consecutive jobs whose read boxes have the same shape."""
        pending: list[_Job] = []
        for job in jobs:
            if pending and (job.rgb.shape != pending[0].rgb.shape or len(pending) >= self.batch_size):
                yield from self._flush(pending)
                pending = []
            pending.append(job)
        if pending:
            yield from self._flush(pending)

    def _flush(self, jobs: list[_Job]) -> Iterator[tuple[int, int, np.ndarray, np.ndarray | None]]:
        from aeutils import speed

        torch, g = self._torch, self.grid
        x = torch.from_numpy(np.stack([j.rgb for j in jobs])).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode():
            z = speed.forward(lambda t: self.model.encoder_forward(t)[0], x, self.choice)
            for i, job in enumerate(jobs):
                rx0, ry0, _, _ = g.read_box(job.ty, job.tx)
                cx0, cy0, cx1, cy1 = g.core_box(job.ty, job.tx)
                lx0, ly0 = (cx0 - rx0) // STRIDE, (cy0 - ry0) // STRIDE
                lw, lh = -(-(cx1 - cx0) // STRIDE), -(-(cy1 - cy0) // STRIDE)
                core = z[i, 0, ly0:ly0 + lh, lx0:lx0 + lw].cpu().numpy().astype(np.float32)
                rec = None
                if self.reconstruction:
                    rec = self._decode(z[i:i + 1], lx0, ly0, lw, lh, cx1 - cx0, cy1 - cy0)
                yield job.ty, job.tx, core, rec

    def _decode(self, z: "torch.Tensor", lx0: int, ly0: int, lw: int, lh: int, w: int, h: int) -> np.ndarray:
        """The core's RGB from the tile's latents, decoded with ``dmargin`` latent pixels of context."""
        from aeutils import speed

        d = self.dmargin
        a0, b0 = max(0, ly0 - d), max(0, lx0 - d)
        a1, b1 = min(z.shape[-2], ly0 + lh + d), min(z.shape[-1], lx0 + lw + d)
        y = speed.forward(self.model.decode, z[:, :, a0:a1, b0:b1].contiguous(), self.choice)[0]
        y = y.clamp(0, 1).mul(255).round().to(self._torch.uint8).permute(1, 2, 0).cpu().numpy()
        oy, ox = STRIDE * (ly0 - a0), STRIDE * (lx0 - b0)
        out = y[oy:oy + h, ox:ox + w]
        if out.shape[:2] != (h, w):  # the last row/column of a side that is not 4k+1: repeat the edge
            out = np.pad(out, ((0, h - out.shape[0]), (0, w - out.shape[1]), (0, 0)), mode="edge")
        return np.ascontiguousarray(out)


def encode_image(
    model: "Autoencoder",
    rgb: np.ndarray,
    *,
    core: int = 512,
    margin: int | None = None,
    reconstruction: bool = False,
    precision: str | None = "fp32",
    batch_size: int | None = None,
    run: int = 4,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The tiled encoding of a whole in-memory image (H x W x 3 uint8), every core encoded.

    Returns ``(map ceil(H/4) x ceil(W/4) float32, reconstruction H x W x 3 uint8 or None)``. Same tile
    loop as :func:`encode_slide`; ``margin`` defaults to :func:`encoder_margin` (+ 4 x
    :func:`decoder_margin` with ``reconstruction``).
    """
    source = ArraySource(rgb)
    if margin is None:
        margin = encoder_margin(model.config) + (STRIDE * decoder_margin(model.config) if reconstruction else 0)
    grid = TileGrid(source.width, source.height, core, margin)
    todo = [(ty, tx) for ty in range(grid.shape[0]) for tx in range(grid.shape[1])]
    enc = TileEncoder(model, grid, reconstruction=reconstruction, precision=precision,
                      expected_tiles=len(todo), batch_size=batch_size)
    zmap = np.zeros(grid.latent_shape, np.float32)
    rec = np.zeros((grid.height, grid.width, 3), np.uint8) if reconstruction else None
    for ty, tx, z, r in enc.run(_read_jobs(source, grid, todo, run)):
        x0, y0, x1, y1 = grid.latent_box(ty, tx)
        zmap[y0:y1, x0:x1] = z
        if rec is not None and r is not None:
            cx0, cy0, cx1, cy1 = grid.core_box(ty, tx)
            rec[cy0:cy1, cx0:cx1] = r
    return zmap, rec


# --------------------------------------------------------------------------------------------- statistics and views
@dataclass
class MapStats:
    """Value statistics of an encoding map over the tissue: count, min, max and a histogram of
    :data:`STAT_BINS` equal bins over [min, max] (``counts``)."""

    count: int
    minimum: float
    maximum: float
    counts: np.ndarray = field(repr=False)

    @classmethod
    def from_values(cls, chunks: Callable[[], Iterator[np.ndarray]]) -> "MapStats":
        """Two passes over ``chunks()`` (a callable returning an iterator of float arrays): min/max, then the histogram."""
        lo, hi, n = math.inf, -math.inf, 0
        for c in chunks():
            if c.size:
                lo, hi, n = min(lo, float(c.min())), max(hi, float(c.max())), n + c.size
        counts = np.zeros(STAT_BINS, np.int64)
        if n == 0:
            return cls(0, 0.0, 0.0, counts)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise AeutilsError("the encoding holds non-finite values")
        for c in chunks():
            if c.size:
                counts += np.histogram(c, bins=STAT_BINS, range=(lo, hi if hi > lo else lo + 1))[0]
        return cls(n, lo, hi, counts)

    def _edges(self, bins: int) -> np.ndarray:
        return np.linspace(self.minimum, self.maximum, bins + 1)

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0..100) of the tissue values, interpolated in the histogram."""
        if self.count == 0 or self.maximum <= self.minimum:
            return self.minimum
        cdf = np.concatenate([[0.0], np.cumsum(self.counts) / self.count])
        return float(np.interp(p / 100.0, cdf, self._edges(STAT_BINS)))

    def view(self, z: np.ndarray, view: str = "stretch", low: float = 2.0, high: float = 98.0) -> np.ndarray:
        """``z`` (any shape of floats) mapped to [0, 1] with the whole slide's statistics.

        ``raw``: (z - min) / (max - min). ``stretch``: the ``low``/``high`` percentiles to 0/1, clipped
        (``skimage.exposure.rescale_intensity``; min-max if they coincide). ``equalize``: the tissue's
        CDF over :data:`EQ_BINS` bins, interpolated at bin centres and scaled so the minimum is 0 and
        the maximum 1 (what :func:`aeutils.viz.encoding_view` does for one map).
        """
        from skimage import exposure

        if view not in VIEWS:
            raise AeutilsError(f"unknown view {view!r}: choose from {', '.join(VIEWS)}")
        if not 0.0 <= low < high <= 100.0:
            raise AeutilsError(f"percentiles need 0 <= low < high <= 100, got low={low}, high={high}")
        z = np.asarray(z, dtype=np.float64)
        lo, hi = self.minimum, self.maximum
        if hi <= lo:
            return np.zeros_like(z)
        if view == "raw":
            return np.clip((z - lo) / (hi - lo), 0.0, 1.0)
        if view == "stretch":
            p_lo, p_hi = self.percentile(low), self.percentile(high)
            if p_hi <= p_lo:
                p_lo, p_hi = lo, hi
            return exposure.rescale_intensity(z, in_range=(p_lo, p_hi), out_range=(0.0, 1.0))
        counts = self.counts.reshape(EQ_BINS, -1).sum(1)
        cdf = np.cumsum(counts) / counts.sum()
        edges = self._edges(EQ_BINS)
        centres = (edges[:-1] + edges[1:]) / 2
        eq = np.interp(z, centres, cdf)
        return np.clip((eq - cdf[0]) / (1.0 - cdf[0]), 0.0, 1.0) if cdf[0] < 1 else np.zeros_like(z)


def to_uint8(v: np.ndarray) -> np.ndarray:
    """A [0, 1] view as uint8 grey levels (rounded)."""
    return np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- work folder
class WorkStore:
    """The finished cores of one run: ``z<ty>_<tx>.npy`` (latent, float32), ``r<ty>_<tx>.npy``
    (reconstruction, uint8 RGB), ``m<ty>_<tx>.npy`` (tissue mask of the latent core, bool), and
    ``settings.json``. Each file is written atomically, so a kill leaves only whole files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _p(self, kind: str, ty: int, tx: int) -> Path:
        return self.folder / f"{kind}{ty:05d}_{tx:05d}.npy"

    def settings(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / "settings.json").read_text())
        except (OSError, ValueError):
            return None

    def start(self, settings: dict[str, Any]) -> bool:
        """Open for ``settings``: True if earlier work with the same settings is kept (resume)."""
        if self.folder.is_dir() and self.settings() == settings:
            return True
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        with atomic_path(self.folder / "settings.json", fsync=False) as tmp:
            tmp.write_text(json.dumps(settings, sort_keys=True))
        return False

    def done(self, ty: int, tx: int, reconstruction: bool) -> bool:
        need = ("z", "m") + (("r",) if reconstruction else ())
        return all(self._p(k, ty, tx).is_file() for k in need)

    def save(self, kind: str, ty: int, tx: int, a: np.ndarray) -> None:
        with atomic_path(self._p(kind, ty, tx), fsync=False) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, a)

    def load(self, kind: str, ty: int, tx: int) -> np.ndarray | None:
        """The stored array (read fully, the mapping closed), or None."""
        p = self._p(kind, ty, tx)
        if not p.is_file():
            return None
        return np.load(p)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------- pyramid TIFF
def pyramid_factors(width: int, height: int, max_factor: int) -> list[int]:
    """Downsample factors 1, 2, 4, ... until the level fits in one TIFF tile or ``max_factor``."""
    f, out = 1, [1]
    while max(-(-width // f), -(-height // f)) > TIFF_TILE and f * 2 <= max_factor:
        f *= 2
        out.append(f)
    return out


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    h, w = a.shape[0] // f, a.shape[1] // f
    b = a[: h * f, : w * f].reshape(h, f, w, f, *a.shape[2:]).astype(np.float32).mean(axis=(1, 3))
    return np.rint(b).astype(np.uint8)


def write_pyramid(
    path: Path,
    width: int,
    height: int,
    channels: int,
    cell: int,
    cells: dict[tuple[int, int], Callable[[], np.ndarray]],
    background: int,
    mpp: float | None,
    description: str,
    compression: str,
) -> Path:
    """Write a tiled pyramidal TIFF of a ``width`` x ``height`` image (``channels`` 1 or 3, uint8)
    made of square cells of ``cell`` px: ``cells[(row, col)]()`` gives a cell's pixels (clipped at the
    image edge), missing cells are ``background``. Levels by :func:`pyramid_factors` (block means),
    TIFF tiles of :data:`TIFF_TILE` px; each tile is produced when written, so memory holds one cell.
    Resolution tags: ``mpp * factor`` um/px per level (none if ``mpp`` is None). Atomic."""
    try:
        import tifffile
    except ImportError:  # pragma: no cover - tifffile is a dependency of the encode command
        raise AeutilsError("writing encoding maps needs the tifffile package (pip install tifffile)") from None

    factors = pyramid_factors(width, height, cell)
    extra = (channels,) if channels > 1 else ()

    def tiles(f: int) -> Iterator[np.ndarray]:
        lw, lh = -(-width // f), -(-height // f)
        for ty in range(0, lh, TIFF_TILE):
            for tx in range(0, lw, TIFF_TILE):
                out = np.full((TIFF_TILE, TIFF_TILE, *extra), background, np.uint8)
                x0, y0 = tx * f, ty * f  # level-0 box of this tile
                x1, y1 = min(width, x0 + TIFF_TILE * f), min(height, y0 + TIFF_TILE * f)
                for cy in range(y0 // cell, -(-y1 // cell)):
                    for cx in range(x0 // cell, -(-x1 // cell)):
                        get = cells.get((cy, cx))
                        if get is None:
                            continue
                        a = get()
                        # the part of this cell inside the tile, in cell pixels (aligned to f: cell % f == 0)
                        ax0, ay0 = max(x0, cx * cell) - cx * cell, max(y0, cy * cell) - cy * cell
                        ax1, ay1 = min(x1, cx * cell + a.shape[1]) - cx * cell, min(y1, cy * cell + a.shape[0]) - cy * cell
                        if ax1 <= ax0 or ay1 <= ay0:
                            continue
                        part = a[ay0:ay1, ax0:ax1]
                        ph, pw = -(-part.shape[0] // f) * f, -(-part.shape[1] // f) * f
                        if part.shape[:2] != (ph, pw):  # slide edge: pad to whole blocks with background
                            pad = ((0, ph - part.shape[0]), (0, pw - part.shape[1])) + (((0, 0),) if extra else ())
                            part = np.pad(part, pad, constant_values=background)
                        small = _block_mean(part, f)
                        oy, ox = (cy * cell + ay0 - y0) // f, (cx * cell + ax0 - x0) // f
                        out[oy:oy + small.shape[0], ox:ox + small.shape[1]] = small
                yield out

    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for k, f in enumerate(factors):
                kw: dict[str, Any] = {}
                if mpp is not None:
                    kw = {"resolution": (1e4 / (mpp * f), 1e4 / (mpp * f)), "resolutionunit": "CENTIMETER"}
                tw.write(
                    tiles(f), shape=(-(-height // f), -(-width // f), *extra), dtype=np.uint8,
                    tile=(TIFF_TILE, TIFF_TILE), photometric="rgb" if extra else "minisblack",
                    compression=compression, subfiletype=0 if k == 0 else 1, metadata=None,
                    description=description if k == 0 else None,
                    **({"compressionargs": {"level": 90}} if compression == "jpeg" else {}), **kw,
                )
    return path


def read_settings(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The settings record stored in a map TIFF's first image description (None if absent)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            data = json.loads(tf.pages[0].description)
    except Exception:  # not ours, truncated, not JSON: treated as "not up to date"
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


# --------------------------------------------------------------------------------------------- one slide
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


def _model_for(model: "Autoencoder | str | os.PathLike[str] | None", device: Any = None) -> "Autoencoder":
    """The model to encode with, in eval mode on ``device`` (:func:`aeutils.device.pick_device`; a
    given model on another device is copied, never moved). :class:`CheckpointError` for a bad
    checkpoint or one whose encoding is not a single channel."""
    import copy

    from aeutils.checkpoint import as_model
    from aeutils.device import pick_device

    given = not (model is None or isinstance(model, (str, os.PathLike)))
    ae = as_model(model, map_location="cpu")
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


def encode_slide(
    slide: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: "Autoencoder | str | os.PathLike[str] | None" = None,
    level: int | None = None,
    mpp: float | None = None,
    assume_mpp: float | None = None,
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
    on_tile: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> SlideMap:
    """Encode one slide's tissue into ``out/<slide>.encoding.tiff`` (and ``.reconstruction.tiff``).

    ``level`` / ``mpp`` / ``assume_mpp``: the input scale, as ``extract`` (:func:`aeutils.scale.resolve_scale`).
    ``model``: an Autoencoder, a checkpoint path, or None (the shipped model). ``view``/``low``/``high``:
    the grey levels written (:meth:`MapStats.view`). ``core`` input px per tile (multiple of 4),
    ``run`` tiles per region read, ``batch_size`` tiles per forward pass (default
    :func:`auto_batch_size`), ``precision`` as in
    :class:`TileEncoder`, ``device`` for :func:`aeutils.device.pick_device`. ``on_tile(ty, tx)`` is
    called after each core is saved (tests interrupt there). Raises :class:`SlideError` (missing,
    not a slide, no tissue, bad scale), :class:`CheckpointError` (bad checkpoint, another architecture).
    """
    from aeutils.scale import resolve_scale
    from aeutils.slides import open_slide
    from aeutils.tissue import detect_tissue

    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    if view not in VIEWS:
        raise AeutilsError(f"unknown view {view!r}: choose from {', '.join(VIEWS)}")
    if not 0.0 <= low < high <= 100.0:
        raise AeutilsError(f"percentiles need 0 <= low < high <= 100, got low={low}, high={high}")
    if core < STRIDE or core % TIFF_TILE:
        raise AeutilsError(f"tile core must be a positive multiple of {TIFF_TILE} px, got {core}")
    out_dir = Path(out)
    with open_slide(slide) as s, _readers_closed():
        choice = resolve_scale(s, level=level, mpp=mpp, assume_mpp=assume_mpp)
        if choice.mpp is None:
            say(choice.describe())
        ae = _model_for(model, device)
        margin = encoder_margin(ae.config) + (STRIDE * decoder_margin(ae.config) if reconstruction else 0)
        source = SlideSource(s, choice)
        grid = TileGrid(source.width, source.height, core, margin)
        enc_path = out_dir / f"{s.name}{ENCODING_SUFFIX}"
        rec_path = out_dir / f"{s.name}{RECONSTRUCTION_SUFFIX}" if reconstruction else None
        st = s.path.stat()
        settings = {
            "format": FORMAT, "slide": s.path.name, "slide_bytes": st.st_size, "slide_mtime_ns": st.st_mtime_ns,
            "level": choice.level, "factor": choice.factor, "mpp": choice.mpp, "mpp_source": choice.mpp_source,
            "input_size": [grid.width, grid.height], "core": core, "margin": margin,
            "model": _model_digest(ae), "config": ae.config.to_dict(), "reconstruction": reconstruction,
        }
        final = {**settings, "view": view, "low": low, "high": high}
        if read_settings(enc_path) == final and (rec_path is None or read_settings(rec_path) == final):
            return SlideMap(enc_path, rec_path, choice.mpp, grid.latent_shape, 0, 0, 0.0, 0.0, None, True)

        # tissue: cores with any tissue; the mask at latent resolution for each
        _, tissue = detect_tissue(s, _mask_side(s))
        if not tissue.mask.any():
            raise SlideError(f"{s.path}: no tissue found (the tissue mask of the thumbnail is empty)")
        ds = choice.downsample  # level-0 px per input px
        rows, cols = grid.shape
        cyx = [(ty, tx) for ty in range(rows) for tx in range(cols)]
        boxes = np.array([grid.core_box(ty, tx) for ty, tx in cyx], dtype=np.float64)
        frac = tissue.fractions(boxes[:, 0] * ds, boxes[:, 1] * ds, core * ds, core * ds)
        tiles = [t for t, f in zip(cyx, frac) if f > 0]
        if not tiles:
            raise SlideError(f"{s.path}: no tissue found (no {core} px tile touches the tissue mask)")

        store = WorkStore(out_dir / f".{s.name}.encoding.work")
        resumed = store.start(settings)
        todo = [t for t in tiles if not (resumed and store.done(*t, reconstruction))]
        if resumed and len(todo) < len(tiles):
            say(f"{s.path}: resuming: {len(tiles) - len(todo)} of {len(tiles)} tiles already encoded")
        mpx = sum((grid.core_box(*t)[2] - grid.core_box(*t)[0]) * (grid.core_box(*t)[3] - grid.core_box(*t)[1])
                  for t in todo) / 1e6
        t0 = time.perf_counter()
        speed_used = ""
        if todo:
            from tqdm.auto import tqdm

            encoder = TileEncoder(ae, grid, reconstruction=reconstruction, precision=precision,
                                  expected_tiles=len(todo), batch_size=batch_size)
            speed_used = encoder.choice.describe()
            bar = tqdm(total=round(mpx, 3), desc=s.name, unit="Mpx", disable=not progress, dynamic_ncols=True,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} Mpx "
                                  "[{elapsed}<{remaining}, {rate_noinv_fmt}]")
            try:
                for ty, tx, z, r in encoder.run(_read_jobs(source, grid, todo, run)):
                    m = _latent_mask(tissue, grid, ty, tx, ds)
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
        seconds = time.perf_counter() - t0

    # statistics over the tissue of the whole slide, then the TIFFs, tile by tile
    def tissue_values() -> Iterator[np.ndarray]:
        for t in tiles:
            z, m = store.load("z", *t), store.load("m", *t)
            if z is not None and m is not None:
                yield z[m]

    stats = MapStats.from_values(tissue_values)

    def enc_cell(t: tuple[int, int]) -> Callable[[], np.ndarray]:
        def get() -> np.ndarray:
            z, m = store.load("z", *t), store.load("m", *t)
            v = to_uint8(stats.view(z, view, low, high))
            v[~m] = 0
            return v
        return get

    description = json.dumps(final, sort_keys=True)
    lh, lw = grid.latent_shape
    map_mpp = None if choice.mpp is None else choice.mpp * STRIDE
    write_pyramid(enc_path, lw, lh, 1, core // STRIDE, {t: enc_cell(t) for t in tiles}, 0, map_mpp,
                  description, "zlib")
    if rec_path is not None:
        write_pyramid(rec_path, grid.width, grid.height, 3, core,
                      {t: (lambda t=t: store.load("r", *t)) for t in tiles}, 255, choice.mpp, description, "jpeg")
    if not keep_work:
        store.remove()
    return SlideMap(enc_path, rec_path, choice.mpp, grid.latent_shape, len(tiles), len(todo), mpx, seconds, stats,
                    speed=speed_used, reader=source.reader)


@contextmanager
def _readers_closed() -> Iterator[None]:
    """Close this process's :mod:`aeutils.tiffread` tile readers (their file handles) on the way out."""
    from aeutils.tiffread import close_readers

    try:
        yield
    finally:
        close_readers()


def _mask_side(slide: Any, lo: int = 1024, hi: int = 2048) -> int:
    """Thumbnail side for the tissue mask: the longer side of the smallest pyramid level with at least
    ``lo`` px (read as is, no larger level decoded and shrunk), at most ``hi``."""
    sides = sorted(max(int(d) for d in dims) for dims in slide.level_dimensions)
    fit = [v for v in sides if v >= lo]
    return min(fit[0], hi) if fit else hi


def _latent_mask(tissue: Any, grid: TileGrid, ty: int, tx: int, ds: float) -> np.ndarray:
    """Tissue mask (bool h x w) of core (ty, tx)'s latent pixels: the thumbnail mask at the level-0
    centre of each latent pixel's 4 x 4 input block."""
    x0, y0, x1, y1 = grid.latent_box(ty, tx)
    H, W = tissue.mask.shape
    sx, sy = tissue.scale
    xs = np.clip(((np.arange(x0, x1) + 0.5) * STRIDE * ds * sx).astype(np.int64), 0, W - 1)
    ys = np.clip(((np.arange(y0, y1) + 0.5) * STRIDE * ds * sy).astype(np.int64), 0, H - 1)
    return tissue.mask[ys[:, None], xs[None, :]]


# --------------------------------------------------------------------------------------------- figure
def map_figure(slide: str | os.PathLike[str], encoding: str | os.PathLike[str], *, max_side: int = 700) -> Any:
    """A figure (``matplotlib.figure.Figure``, not pyplot) of a slide's thumbnail beside its encoding
    map, both read back with :mod:`aeutils.slides` (so it shows what a slide viewer opens)."""
    from matplotlib.figure import Figure

    from aeutils.slides import open_slide

    with open_slide(slide) as s:
        thumb, dims, smpp = s.thumbnail(max_side), s.dimensions, s.mpp
        name = s.path.name
    with open_slide(encoding) as e:
        emap, edims, empp = e.thumbnail(max_side), e.dimensions, e.mpp
        info = read_settings(encoding) or {}
    fig = Figure(figsize=(12, 6.6), dpi=100)
    axes = fig.subplots(1, 2, gridspec_kw={"left": 0.01, "right": 0.99, "bottom": 0.01, "top": 0.86, "wspace": 0.04})
    axes[0].imshow(thumb)
    used = info.get("mpp")  # the input scale the map was made at (an assumed one when the tag is wrong)
    if used and info.get("mpp_source") == "assumed":
        scale = f", read at {used:.4g} \u00b5m/px (assumed; the file claims {smpp:.4g})" if smpp else f", {used:.4g} \u00b5m/px (assumed)"
    elif used:
        scale = f", read at {used:.4g} \u00b5m/px"
    else:
        scale = f", {smpp:.4g} \u00b5m/px" if smpp else ""
    axes[0].set_title(f"{name}\n{dims[0]} x {dims[1]} px{scale}", fontsize=10)
    axes[1].imshow(emap[..., 0], cmap="gray", vmin=0, vmax=255)
    view = info.get("view", "?")
    label = f"{view} {info.get('low', 2):g}-{info.get('high', 98):g} %" if view == "stretch" else view
    axes[1].set_title(f"{Path(encoding).name} ({label}, whole-slide tissue statistics)\n{edims[0]} x {edims[1]} px"
                      + (f", {empp:.4g} \u00b5m/px" if empp else ""), fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle("A slide and its encoding map (python -m aeutils encode)", fontsize=12, y=0.985)
    return fig


def write_map_figure(slide: str | os.PathLike[str], encoding: str | os.PathLike[str], png: str | os.PathLike[str]) -> Path:
    """:func:`map_figure` saved as a PNG (atomic, no software metadata)."""
    from aeutils.io import atomic_write_bytes
    from aeutils.viz import figure_png

    return atomic_write_bytes(png, figure_png(map_figure(slide, encoding)))


# --------------------------------------------------------------------------------------------- CLI
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m aeutils encode``."""
    from aeutils.scale import add_scale_arguments

    parser.add_argument("slides", nargs="+", metavar="SLIDE", help="whole-slide images (any OpenSlide format)")
    parser.add_argument("--out", required=True, type=Path, help="output folder: <slide>.encoding.tiff per slide")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="model checkpoint (default: the shipped model, or $MSCOPY_PRETRAINED)")
    add_scale_arguments(parser)
    parser.add_argument("--view", choices=VIEWS, default="stretch",
                        help="grey levels written: raw (min-max), stretch (percentiles), equalize (default stretch); "
                             "statistics over the whole slide's tissue")
    parser.add_argument("--percentiles", type=float, nargs=2, default=(2.0, 98.0), metavar=("LOW", "HIGH"),
                        help="percentiles of the stretch view (default 2 98)")
    parser.add_argument("--reconstruction", action="store_true",
                        help="also write <slide>.reconstruction.tiff, the decoded RGB at the input scale")
    parser.add_argument("--tile", type=int, default=768,
                        help="tile core in input px, a multiple of 256 (default 768: cache-sized on the CPU; larger on a GPU)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="tiles per forward pass (default: 1 on the CPU, as many as fit 1 GiB on a GPU)")
    parser.add_argument("--precision", choices=("auto", "fp32", "channels_last", "bf16", "channels_last+bf16"),
                        default="auto", help="auto: measured once per run (aeutils.speed); fp32: exact")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--figure", type=Path, default=None, metavar="PNG",
                        help="also save the (first) slide's thumbnail beside its map as a PNG")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder of raw float tiles")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_cli(args: argparse.Namespace) -> int:
    """Encode each slide; a failing slide prints one ``error: ...`` line and the others go on (exit 2)."""
    if args.checkpoint is not None and not Path(args.checkpoint).exists():
        raise CheckpointError(f"{args.checkpoint}: no such checkpoint file")
    from aeutils.scale import check_assume_mpp, scale_kwargs

    check_assume_mpp(args.assume_mpp)
    model = _model_for(args.checkpoint, args.device)  # once, and a bad checkpoint fails before any slide
    failed = 0
    seen: dict[str, str] = {}
    for i, path in enumerate(args.slides):
        try:
            stem = Path(path).stem
            if stem in seen:
                raise SlideError(f"{path}: same name as {seen[stem]} (maps are named by slide stem)")
            seen[stem] = str(path)
            res = encode_slide(
                path, args.out, model=model, **scale_kwargs(args), view=args.view, low=args.percentiles[0],
                high=args.percentiles[1], reconstruction=args.reconstruction, core=args.tile,
                batch_size=args.batch_size, precision=None if args.precision == "auto" else args.precision,
                progress=not args.quiet, keep_work=args.keep_work,
            )
        except AeutilsError as err:
            failed += 1
            print(f"error: {err}", file=sys.stderr, flush=True)
            continue
        if res.up_to_date:
            what = "up to date"
        elif res.encoded == 0:
            what = f"all {res.tiles} tissue tiles resumed from the work folder"
        else:
            what = (f"{res.encoded} of {res.tiles} tissue tiles encoded, {res.megapixels:.1f} Mpx at "
                    f"{res.mpx_per_s:.2f} Mpx/s")
        mpp = f", {res.mpp * STRIDE:.4g} um/px" if res.mpp else ""
        print(f"{res.encoding} ({res.shape[1]} x {res.shape[0]} px{mpp}; {what})"
              + (f" + {res.reconstruction}" if res.reconstruction else ""))
        if args.figure is not None and i == 0:
            print(write_map_figure(path, res.encoding, args.figure))
    return 2 if failed else 0
