"""The bundled sample slide (``data/sample/CMU-1-Small-Region.svs``) and its checksum."""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from aeutils.errors import SlideError

SAMPLE_NAME = "CMU-1-Small-Region.svs"
SAMPLE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
#: Level-0 size (width, height) in pixels and resolution of the sample slide, for docs and tests.
SAMPLE_DIMENSIONS = (2220, 2967)
SAMPLE_MPP = 0.499


def _candidates() -> list[Path]:
    found = []
    env = os.environ.get("MSCOPY_SAMPLE_SLIDE")
    if env:
        found.append(Path(env))
    # Source checkout / editable install: <repo>/data/sample/ next to the package folder.
    found.append(Path(__file__).resolve().parent.parent / "data" / "sample" / SAMPLE_NAME)
    return found


@lru_cache(maxsize=None)
def _verified(path: Path, size: int, mtime_ns: int) -> bool:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() == SAMPLE_SHA256


def sample_slide() -> Path:
    """Path of the bundled sample slide, an Aperio SVS (2220 x 2967 px at level 0, 0.499 um/px).

    The file's sha256 is checked (once per file version); a missing or altered copy raises
    :class:`~aeutils.errors.SlideError`. ``MSCOPY_SAMPLE_SLIDE`` overrides the location.
    """
    for path in _candidates():
        if path.is_file():
            st = path.stat()
            if not _verified(path, st.st_size, st.st_mtime_ns):
                raise SlideError(f"{path}: sha256 does not match the bundled sample slide ({SAMPLE_SHA256[:12]}...)")
            return path
    tried = ", ".join(str(p) for p in _candidates())
    raise SlideError(f"{SAMPLE_NAME}: bundled sample slide not found (looked in {tried})")
