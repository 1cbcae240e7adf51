"""What a patch becomes on disk: deterministic PNG bytes, the "is this PNG whole?" check resume relies
on, and the patch's ``manifest.csv`` row (columns: :mod:`aeutils.manifest`). Never imports torch.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from aeutils.patches.grid import GridCell, SlidePlan

__all__ = ["encode_png", "png_complete", "png_size", "manifest_row", "PNG_COMPRESS_LEVEL", "PNG_STRATEGY"]

#: PNG settings when PIL encodes (no imagecodecs): zlib level 1 with the run-length strategy (zlib.Z_RLE),
#: ~2x faster than PIL's default level 6 for files of the same size. See :func:`encode_png`.
PNG_COMPRESS_LEVEL = 1
PNG_STRATEGY = 3


def encode_png(rgb: Any) -> bytes:
    """Deterministic PNG bytes of an h x w x 3 uint8 array (or an RGB PIL image).

    With imagecodecs (libpng): zlib level 1, run-length strategy, Paeth row filter: on H&E patches
    ~4x faster than PIL's default save (adaptive filters, level 6) for files of about the same size.
    Without imagecodecs: PIL at level 1 with the run-length strategy (~2x faster than its default,
    same size).
    """
    arr = np.ascontiguousarray(rgb) if isinstance(rgb, np.ndarray) else np.asarray(rgb)
    codecs = _imagecodecs()
    if codecs is not None:
        return bytes(codecs.png_encode(arr, level=1, strategy=3, filter=128))
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_STRATEGY)
    return buf.getvalue()


_CODECS: list[Any] = []


def _imagecodecs() -> Any:
    """The imagecodecs module if it is installed and has PNG, else None (checked once)."""
    if not _CODECS:
        try:
            import imagecodecs

            imagecodecs.png_encode(np.zeros((2, 2, 3), np.uint8), level=1, strategy=3, filter=128)
            _CODECS.append(imagecodecs)
        except Exception:  # not installed, or built without libpng: PIL does it
            _CODECS.append(None)
    return _CODECS[0]


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG header, or None if the file is missing or not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def png_complete(path: Path, size: int, nbytes: int | None = None) -> bool:
    """Whether ``path`` is a whole ``size`` x ``size`` PNG: header, end chunk, and ``nbytes`` if known;
    without ``nbytes`` (a patch the manifest does not list yet) the image is decoded in full."""
    if png_size(path) != (size, size):
        return False
    try:
        n = path.stat().st_size
        if nbytes is not None:
            if n != nbytes:
                return False
            with open(path, "rb") as f:
                f.seek(n - len(_IEND))
                return f.read() == _IEND
        from PIL import Image

        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------------
# manifest rows


def _fmt(v: float | None, digits: int = 6) -> str:
    return "" if v is None else f"{v:.{digits}g}"


def manifest_row(plan: SlidePlan, c: GridCell, nbytes: int | None = None) -> dict[str, str]:
    """The ``manifest.csv`` row (strings) of cell ``c`` of ``plan``; ``nbytes``: its PNG's size if written."""
    return {
        "path": c.relpath(plan.name), "slide": plan.name, "level": str(c.level), "x": str(c.x), "y": str(c.y),
        "size": str(c.size), "mpp": _fmt(plan.mpp), "tissue_fraction": f"{c.tissue_fraction:.4f}",
        "tumour_fraction": "" if c.tumour_fraction is None else f"{c.tumour_fraction:.4f}",
        "label": "" if c.label is None else str(c.label),
        "downsample": _fmt(plan.downsample, 8), "slide_width": str(plan.dimensions[0]),
        "slide_height": str(plan.dimensions[1]), "stride": str(plan.stride), "resample": _fmt(plan.factor, 8),
        "mpp_source": plan.mpp_source or "", "bytes": "" if nbytes is None else str(nbytes),
        "tissue_source": plan.tissue_source, "resample_filter": plan.resample_filter or "",
    }
