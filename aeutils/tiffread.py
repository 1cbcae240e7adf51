"""Fast level reads for tiled TIFF slides: decode the needed tiles directly (tifffile + imagecodecs).

OpenSlide paints a region tile by tile into a cairo surface (~20-45 ns per pixel on a Zen 4 core,
cached tiles included); decoding the same JPEG tiles with tifffile/imagecodecs (libjpeg-turbo) and
copying them into place costs ~6 ns per pixel. :func:`tile_reader` gives such a reader for one level of
one file **only when it is verified** to give OpenSlide's pixels:

* the file is one OpenSlide reads as ``aperio`` (.svs) or ``generic-tiff`` (tiled pyramidal .tif);
* exactly one tiled, contiguous, 3-sample uint8 TIFF page has the level's dimensions as OpenSlide
  reports them;
* two tile-sized sample regions straddling tile boundaries (from the most detailed tile, i.e. the one
  with the most compressed bytes, into its neighbours; the bottom-right corner with its partial edge
  tiles) decode **bit-identically** to
  ``OpenSlide.read_region(...).convert("RGB")``.

No tolerance is allowed: on every file tried (the bench's JPEG pyramids, the bundled Aperio and
generic-TIFF slides) both libraries run the same libjpeg-turbo decode and agree exactly, so any
difference means the file is something this reader does not understand, and OpenSlide stays the reader.
Otherwise (another vendor, a level with a non-integer downsample, a region reaching outside the level,
a tile that is missing or fails to decode) callers fall back to OpenSlide, which also produces the
error messages. Readers are per process (workers fork) and read with ``os.pread``.

Damaged files: a truncated file (the usual bad download) reads short, the reader raises and OpenSlide
gives its error, as before. A tile whose JPEG bytes are damaged *inside* the file is different: libjpeg
reports most such damage only as a warning, which OpenSlide turns into an error but imagecodecs ignores
(it has no strict mode), so such a tile is decoded to libjpeg's best-effort pixels instead of failing.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np

from aeutils.errors import one_line

__all__ = ["TileReader", "tile_reader", "why_not", "close_readers", "describe", "VENDORS", "CACHE_BYTES"]

#: OpenSlide vendors whose levels are plain TIFF pages (tiles abut, no overlaps, no stitching)
VENDORS = ("aperio", "generic-tiff")
#: decoded tiles kept per reader (neighbouring strips share tile rows)
CACHE_BYTES = 48 * 2**20


class TileReader:
    """One level of one tiled TIFF page, read by decoding its tiles.

    ``read(x, y, w, h)`` takes **pixels of the level** (top-left ``(x, y)``, size ``w x h``) and returns
    h x w x 3 uint8 RGB. Build it with :func:`tile_reader`, which verifies it against OpenSlide.
    """

    def __init__(self, path: str, page: Any, fd: int):
        self.path = path
        self._page = page
        self._fd = fd
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.tw, self.th = int(page.tilewidth), int(page.tilelength)
        self._nx = (self.width + self.tw - 1) // self.tw
        self._offsets = page.dataoffsets
        self._counts = page.databytecounts
        self._jpegtables = getattr(page, "jpegtables", None)
        self._decode = page.decode
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached = 0

    def covers(self, x: int, y: int, w: int, h: int) -> bool:
        """Whether level pixels ``[x, x+w) x [y, y+h)`` lie inside the level (w, h >= 1)."""
        return w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= self.width and y + h <= self.height

    def _tile(self, idx: int) -> np.ndarray:
        t = self._cache.get(idx)
        if t is not None:
            self._cache.move_to_end(idx)
            return t
        n = int(self._counts[idx])
        if n <= 0:
            raise ValueError(f"tile {idx} is missing")
        data = os.pread(self._fd, n, int(self._offsets[idx]))
        if len(data) != n:
            raise ValueError(f"tile {idx} is truncated")
        t, _, _ = self._decode(data, idx, jpegtables=self._jpegtables)
        if t is None:
            raise ValueError(f"tile {idx} did not decode")
        t = np.asarray(t).reshape(self.th, self.tw, -1)[:, :, :3]
        self._cache[idx] = t
        self._cached += t.nbytes
        while self._cached > CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.nbytes
        return t

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Level pixels ``[x, x+w) x [y, y+h)`` (must be inside the level) as h x w x 3 uint8.

        Raises ``ValueError`` (or an imagecodecs error) for a region outside the level or a bad tile.
        """
        if not self.covers(x, y, w, h):
            raise ValueError(f"region {(x, y, w, h)} outside the level ({self.width} x {self.height})")
        out = np.empty((h, w, 3), np.uint8)
        tw, th = self.tw, self.th
        for ty in range(y // th, (y + h - 1) // th + 1):
            sy0 = ty * th
            ay0, ay1 = max(y, sy0), min(y + h, sy0 + th)
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                sx0 = tx * tw
                ax0, ax1 = max(x, sx0), min(x + w, sx0 + tw)
                t = self._tile(ty * self._nx + tx)
                out[ay0 - y:ay1 - y, ax0 - x:ax1 - x] = t[ay0 - sy0:ay1 - sy0, ax0 - sx0:ax1 - sx0]
        return out


# (pid, path, level) -> reader or the reason there is none
_READERS: dict[tuple[int, str, int], TileReader | str] = {}
_FILES: dict[tuple[int, str], tuple[Any, int]] = {}  # (pid, path) -> (TiffFile, fd)


def _check_regions(r: TileReader) -> list[tuple[int, int, int, int]]:
    """Level-pixel regions compared with OpenSlide, each one tile in size and straddling tile
    boundaries: from the centre of the tile with the most bytes (the most detail) into its
    neighbours, and the bottom-right corner (the partial edge tiles and the ones before them)."""
    counts = np.asarray(r._counts)
    big = int(np.argmax(counts))
    tx, ty = big % r._nx, big // r._nx
    cw, ch = min(r.width, r.tw), min(r.height, r.th)
    x0 = min(max(0, tx * r.tw + r.tw // 2), r.width - cw)
    y0 = min(max(0, ty * r.th + r.th // 2), r.height - ch)
    return [(x0, y0, cw, ch), (r.width - cw, r.height - ch, cw, ch)]


def _build(path: str, level: int, osr: Any) -> TileReader | str:
    try:  # an OpenSlide handle in its sticky error state raises here
        vendor = osr.properties.get("openslide.vendor")
        ds = float(osr.level_downsamples[level])
        lw, lh = (int(v) for v in osr.level_dimensions[level])
    except Exception as exc:
        return f"OpenSlide cannot describe the level ({type(exc).__name__})"
    if vendor not in VENDORS:
        return f"OpenSlide vendor {vendor!r} is not a plain tiled TIFF"
    if not ds.is_integer():
        return f"level {level} downsample {ds:g} is not an integer (OpenSlide maps coordinates by division)"
    if not hasattr(os, "pread"):  # Windows: OpenSlide reads
        return "no os.pread on this platform"
    try:
        import tifffile
    except ImportError:
        return "tifffile is not installed"
    key = (os.getpid(), path)
    if key not in _FILES:
        try:
            tf = tifffile.TiffFile(path)
            fd = os.open(path, os.O_RDONLY)
        except Exception as exc:  # not parseable by tifffile: OpenSlide only
            return f"tifffile cannot open it ({type(exc).__name__})"
        _FILES[key] = (tf, fd)
    tf, fd = _FILES[key]
    pages = [p for p in tf.pages
             if getattr(p, "is_tiled", False) and (int(p.imagewidth), int(p.imagelength)) == (lw, lh)
             and int(p.samplesperpixel) == 3 and int(p.bitspersample) == 8 and int(p.planarconfig) == 1
             and int(getattr(p, "imagedepth", 1)) == 1]
    if len(pages) != 1:
        return f"{len(pages)} tiled RGB TIFF pages have level {level}'s size {lw} x {lh}"
    r = TileReader(path, pages[0], fd)
    import openslide

    # A handle of its own: a failed OpenSlide read leaves a handle in an error state for good, and the
    # caller's handle must not fail on pixels it would never have read.
    ref_osr = None
    try:
        ref_osr = openslide.OpenSlide(path)
        for x, y, w, h in _check_regions(r):
            ours = r.read(x, y, w, h)
            ref = np.asarray(ref_osr.read_region((int(x * ds), int(y * ds)), level, (w, h)).convert("RGB"))
            if not np.array_equal(ours, ref):
                return (f"tile decoding differs from OpenSlide at level {level} region {(x, y, w, h)} "
                        f"(max abs diff {int(np.abs(ours.astype(np.int16) - ref).max())})")
    except Exception as exc:  # a tile tifffile/imagecodecs cannot decode, or OpenSlide cannot read
        return f"verification read failed ({type(exc).__name__}: {one_line(exc, 120)})"
    finally:
        if ref_osr is not None:
            ref_osr.close()
    r._cache.clear()
    r._cached = 0
    return r


def tile_reader(path: str | os.PathLike[str], level: int, osr: Any) -> TileReader | None:
    """A verified :class:`TileReader` for ``level`` of ``path`` (``osr``: an ``openslide.OpenSlide`` of it,
    for the pyramid's description; the pixel check uses a handle of its own), or ``None`` when the file/level must be read by OpenSlide (see :func:`why_not`). Cached per process."""
    key = (os.getpid(), str(path), int(level))
    got = _READERS.get(key)
    if got is None:
        got = _READERS[key] = _build(str(path), int(level), osr)
    return got if isinstance(got, TileReader) else None


def why_not(path: str | os.PathLike[str], level: int) -> str | None:
    """Why :func:`tile_reader` gave no reader for ``path``/``level`` in this process (None: it gave one
    or was not asked)."""
    got = _READERS.get((os.getpid(), str(path), int(level)))
    return got if isinstance(got, str) else None


def close_readers() -> None:
    """Close this process's files and forget its readers (the next call verifies again)."""
    pid = os.getpid()
    for key in [k for k in _FILES if k[0] == pid]:
        tf, fd = _FILES.pop(key)
        try:
            tf.close()
        finally:
            os.close(fd)
    for key in [k for k in _READERS if k[0] == pid]:
        del _READERS[key]


def describe(path: str | os.PathLike[str], level: int, osr: Any) -> str:
    """One line: which reader ``level`` of ``path`` gets ('tile decoding' or 'OpenSlide: <why>')."""
    r = tile_reader(path, level, osr)
    return "tile decoding (verified identical to OpenSlide)" if r is not None else f"OpenSlide ({why_not(path, level)})"

