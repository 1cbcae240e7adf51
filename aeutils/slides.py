"""Whole-slide images through OpenSlide: levels, microns per pixel, thumbnails, region reads.

Any format OpenSlide reads (Aperio SVS, generic tiled TIFF, Hamamatsu NDPI, MIRAX, ...) opens with
:func:`open_slide`. Coordinates ``x, y`` are always level-0 pixels (OpenSlide's convention); sizes are
pixels at the level read. Every failure (missing file, not a slide, truncated file, bad level, patch
larger than the level) is a :class:`~aeutils.errors.SlideError` whose message names the file.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from aeutils.errors import SlideError, one_line
from aeutils.io import missing_reason

__all__ = ["Slide", "open_slide"]


def _openslide() -> Any:
    import openslide  # openslide-python + openslide-bin (the shared library as a wheel)

    return openslide


class Slide:
    """An open whole-slide image.

    Attributes:
        path: the file.
        name: the file's stem (used in patch file names and the manifest).
        dimensions: ``(width, height)`` of level 0 in pixels.
        level_count, level_dimensions, level_downsamples: the pyramid, as OpenSlide reports it.
        mpp: microns per pixel at level 0 (``openslide.mpp-x``), or ``None`` when the file does not say.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.name = self.path.stem
        if not self.path.exists():
            raise SlideError(f"{self.path}: {missing_reason(self.path)}")  # no such file, a dangling link, a loop
        if not self.path.is_file():
            raise SlideError(f"{self.path}: not a file")
        openslide = _openslide()
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideError(f"{self.path}: {_unsupported_reason(self.path)}") from None
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise SlideError(f"{self.path}: cannot open slide ({one_line(exc)}); truncated or corrupt file?") from None
        try:
            self.dimensions: tuple[int, int] = tuple(self._osr.dimensions)  # type: ignore[assignment]
            self.level_count: int = int(self._osr.level_count)
            self.level_dimensions: tuple[tuple[int, int], ...] = tuple(tuple(d) for d in self._osr.level_dimensions)  # type: ignore[misc]
            self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in self._osr.level_downsamples)
            props = self._osr.properties
        except openslide.OpenSlideError as exc:
            self.close()
            raise SlideError(f"{self.path}: cannot read slide ({one_line(exc)}); truncated or corrupt file?") from None
        self.mpp: float | None = _float_or_none(props.get(openslide.PROPERTY_NAME_MPP_X))
        self.vendor: str | None = props.get(openslide.PROPERTY_NAME_VENDOR)
        if self.dimensions[0] <= 0 or self.dimensions[1] <= 0:
            self.close()
            raise SlideError(f"{self.path}: empty slide (dimensions {self.dimensions})")

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the OpenSlide handle (idempotent)."""
        osr = getattr(self, "_osr", None)
        if osr is not None:
            osr.close()
            self._osr = None

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, dimensions={self.dimensions}, levels={self.level_count}, mpp={self.mpp})"

    # -- geometry --------------------------------------------------------------------------------
    def check_level(self, level: int) -> None:
        """Raise :class:`SlideError` unless ``0 <= level < level_count``."""
        if not isinstance(level, (int, np.integer)) or not 0 <= level < self.level_count:
            raise SlideError(
                f"{self.path}: level {level} out of range (the slide has levels 0..{self.level_count - 1})"
            )

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel at ``level`` (level-0 mpp times the downsample), or ``None`` if unknown."""
        self.check_level(level)
        return None if self.mpp is None else self.mpp * self.level_downsamples[level]

    def level_for_mpp(self, mpp: float, *, tolerance: float = 0.2) -> int:
        """The pyramid level whose resolution is nearest ``mpp`` (microns/pixel).

        Raises :class:`SlideError` if the slide's mpp is unknown, or no level is within ``tolerance``
        (relative) of the target. A lookup of levels only: extraction chooses its scale with
        :func:`aeutils.scale.resolve_scale`, which downsamples the next finer level when no level is
        near the target and handles missing or implausible tags (``--assume-mpp``).
        """
        if not mpp > 0:
            raise SlideError(f"{self.path}: target mpp must be > 0, got {mpp}")
        if self.mpp is None:
            raise SlideError(f"{self.path}: the slide does not record its microns per pixel; use --level instead of --mpp")
        mpps = [self.mpp * d for d in self.level_downsamples]
        best = min(range(self.level_count), key=lambda i: abs(math.log(mpps[i] / mpp)))
        if abs(mpps[best] / mpp - 1) > tolerance:
            have = ", ".join(f"{i}: {m:.3g}" for i, m in enumerate(mpps))
            raise SlideError(f"{self.path}: no pyramid level near {mpp:g} um/px (levels have {have})")
        return best

    # -- pixels ----------------------------------------------------------------------------------
    def _handle(self) -> Any:
        if self._osr is None:
            raise SlideError(f"{self.path}: slide is closed")
        return self._osr

    def read_region_rgba(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """``size = (w, h)`` pixels at ``level`` from level-0 ``(x, y)``, as OpenSlide returns them: h x w x 4 uint8."""
        self.check_level(level)
        openslide = _openslide()
        try:
            img = self._handle().read_region((int(x), int(y)), int(level), (int(size[0]), int(size[1])))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self.path}: cannot read pixels ({one_line(exc)}); truncated or corrupt file?") from None
        return np.asarray(img)

    def read_region(self, x: int, y: int, level: int, size: int | tuple[int, int]) -> np.ndarray:
        """A square (``size``) or ``(w, h)`` region at ``level`` with top-left at level-0 ``(x, y)``.

        Returns h x w x 3 uint8 RGB, identical to ``OpenSlide.read_region((x, y), level, (w, h)).convert("RGB")``
        (outside the slide: black). Raises :class:`SlideError` for a bad level or a corrupt file.
        """
        w, h = (size, size) if isinstance(size, (int, np.integer)) else size
        self.check_level(level)
        openslide = _openslide()
        try:
            return read_rgb(self._handle(), int(x), int(y), int(level), int(w), int(h))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self.path}: cannot read pixels ({one_line(exc)}); truncated or corrupt file?") from None

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """The whole slide shrunk to fit ``max_side`` pixels (aspect kept): H x W x 3 uint8 RGB.

        Read from the coarsest pyramid level whose longer side is at least ``0.75 * max_side`` (so a
        level near the request is used as is instead of decoding a 4x larger one), then shrunk with
        PIL if it is larger than ``max_side``. Scale relative to level 0 is
        ``thumbnail.shape[1] / dimensions[0]`` (width) and ``thumbnail.shape[0] / dimensions[1]`` (height).
        """
        from PIL import Image

        max_side = int(max_side)
        if max_side < 1:
            raise SlideError(f"{self.path}: thumbnail size must be >= 1, got {max_side}")
        level = 0
        for i in range(self.level_count - 1, -1, -1):
            if max(self.level_dimensions[i]) >= 0.75 * max_side:
                level = i
                break
        w, h = self.level_dimensions[level]
        img = Image.fromarray(self.read_region(0, 0, level, (w, h)))
        if max(w, h) > max_side:
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return np.asarray(img)


def read_rgb(osr: Any, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
    """``osr.read_region((x, y), level, (w, h)).convert("RGB")`` as an h x w x 3 uint8 array.

    ``osr`` is an ``openslide.OpenSlide``; raises ``openslide.OpenSlideError``. (Painting the region
    inside OpenSlide dominates the cost; the RGBA -> RGB conversion is a small part of it.)
    """
    return np.asarray(osr.read_region((x, y), level, (w, h)).convert("RGB"))


def open_slide(path: str | os.PathLike[str]) -> Slide:
    """Open a whole-slide image (any OpenSlide format). Raises :class:`SlideError` with the file named."""
    return Slide(path)


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _unsupported_reason(path: Path) -> str:
    """Why OpenSlide refused ``path``: empty, a damaged TIFF, or not a slide at all."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc})"
    if size == 0:
        return "empty file, not a slide"
    if head in _TIFF_MAGIC:
        return "TIFF file that OpenSlide cannot open (truncated or corrupt?)"
    return "not a slide (OpenSlide does not recognise the format)"


def _float_or_none(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None
