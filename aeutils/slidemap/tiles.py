"""The tile loop: read cores with their margins in runs, encode them in batches, keep each core's latents.

Each row of cores is read in runs of up to ``run`` neighbouring cores (one region read each, like
extraction's strips) and encoded in batches of same-shape tiles under the CPU/GPU speed choice of
:func:`aeutils.speed.inference_choice`; latent pixel ``j`` of a tile is centred on its input pixel
``4j`` and sees only pixels within the margin, so the kept cores join without seams.
torch is imported inside the functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from aeutils.slidemap.geometry import STRIDE, TileGrid, decoder_margin, tile_margin
from aeutils.slidemap.sources import ArraySource

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from aeutils.model import Autoencoder, AutoencoderConfig

#: one encoded core: (ty, tx, latent core float32 h x w, reconstruction core uint8 H x W x 3 or None)
EncodedCore = tuple[int, int, np.ndarray, "np.ndarray | None"]


@dataclass
class TileJob:
    """One tile to encode: core (ty, tx) and the pixels of its read box (h x w x 3 uint8)."""

    ty: int
    tx: int
    rgb: np.ndarray


def runs_of(cols: Sequence[int], run: int) -> list[list[int]]:
    """Consecutive columns grouped in runs of at most ``run``."""
    out: list[list[int]] = []
    for c in cols:
        if out and c == out[-1][-1] + 1 and len(out[-1]) < run:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def read_jobs(source: Any, grid: TileGrid, todo: Sequence[tuple[int, int]], run: int) -> Iterator[TileJob]:
    """Read the tiles of ``todo`` (row-major (ty, tx)) in runs of neighbouring cores: one region read per run."""
    rows: dict[int, list[int]] = {}
    for ty, tx in todo:
        rows.setdefault(ty, []).append(tx)
    for ty in sorted(rows):
        for cols in runs_of(sorted(rows[ty]), run):
            bx0, by0, _, by1 = grid.read_box(ty, cols[0])
            bx1 = grid.read_box(ty, cols[-1])[2]
            strip = source.read(bx0, by0, bx1 - bx0, by1 - by0)
            for tx in cols:
                x0, y0, x1, y1 = grid.read_box(ty, tx)
                yield TileJob(ty, tx, np.ascontiguousarray(strip[:, x0 - bx0:x1 - bx0]))


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


def same_shape_batches(jobs: Iterable[Any], batch_size: int) -> Iterator[list[Any]]:
    """Consecutive ``jobs`` grouped into lists of at most ``batch_size`` whose ``rgb`` arrays have one shape
    (tiles at the slide's edge are smaller: they start a batch of their own). Shared by ``encode`` and ``sr apply``."""
    pending: list[Any] = []
    for job in jobs:
        if pending and (job.rgb.shape != pending[0].rgb.shape or len(pending) >= batch_size):
            yield pending
            pending = []
        pending.append(job)
    if pending:
        yield pending


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

    def run(self, jobs: Iterator[TileJob]) -> Iterator[EncodedCore]:
        """(ty, tx, latent core float32 h x w, reconstruction core uint8 H x W x 3 or None) per job,
        batching consecutive jobs whose read boxes have the same shape."""
        for batch in same_shape_batches(jobs, self.batch_size):
            yield from self._flush(batch)

    def _flush(self, jobs: list[TileJob]) -> Iterator[EncodedCore]:
        """Encode one batch of same-shape tiles; each tile's core latents (and decoded core)."""
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
    loop as :func:`~aeutils.slidemap.encode_slide`; ``margin`` defaults to
    :func:`~aeutils.slidemap.geometry.tile_margin`.
    """
    source = ArraySource(rgb)
    if margin is None:
        margin = tile_margin(model.config, reconstruction)
    grid = TileGrid(source.width, source.height, core, margin)
    todo = [(ty, tx) for ty in range(grid.shape[0]) for tx in range(grid.shape[1])]
    enc = TileEncoder(model, grid, reconstruction=reconstruction, precision=precision,
                      expected_tiles=len(todo), batch_size=batch_size)
    zmap = np.zeros(grid.latent_shape, np.float32)
    rec = np.zeros((grid.height, grid.width, 3), np.uint8) if reconstruction else None
    for ty, tx, z, r in enc.run(read_jobs(source, grid, todo, run)):
        x0, y0, x1, y1 = grid.latent_box(ty, tx)
        zmap[y0:y1, x0:x1] = z
        if rec is not None and r is not None:
            cx0, cy0, cx1, cy1 = grid.core_box(ty, tx)
            rec[cy0:cy1, cx0:cx1] = r
    return zmap, rec
