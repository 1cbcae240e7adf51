"""Synthetic whole-slide images for tests and benchmarks: tiled, JPEG-compressed, multi-level TIFFs.

OpenSlide reads them as "generic tiled TIFF". The tissue layout is known exactly: pink textured
rectangles on near-white glass, so the grid cells a correct extractor keeps can be listed by hand.
Also writes ASAP (CAMELYON16) annotation XML, and smooth "40x" pyramids of real tissue enlarged 2x
(:func:`upsampled_pyramid`) whose true 0.5 um/px pixels are known, for resampling fidelity.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in level-0 pixels (x1, y1 exclusive)

GLASS = (242, 240, 244)
TISSUE = (214, 120, 180)


def synthetic_image(width: int, height: int, tissue: Iterable[Rect], *, seed: int = 0) -> np.ndarray:
    """Level-0 RGB image (height x width x 3 uint8): textured pink ``tissue`` rectangles on glass."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = GLASS
    noise = rng.integers(-6, 7, size=(height, width, 1), dtype=np.int16)
    img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    for x0, y0, x1, y1 in tissue:
        h, w = y1 - y0, x1 - x0
        # Texture: smooth stripes + noise (so pixel-identity checks compare real content).
        yy, xx = np.mgrid[0:h, 0:w]
        wave = (18 * np.sin((xx + 2 * yy) / 7.0)).astype(np.int16)[..., None]
        tex = np.array(TISSUE, dtype=np.int16) + wave + rng.integers(-20, 21, size=(h, w, 3), dtype=np.int16)
        img[y0:y1, x0:x1] = np.clip(tex, 0, 255).astype(np.uint8)
    return img


def pyramid(img: np.ndarray, levels: int, step: int = 2) -> list[np.ndarray]:
    """``levels`` images, each ``1/step`` the previous one (``step`` x ``step`` mean, ragged edge dropped).

    ``step=2``: the usual halving pyramid; ``step=4``: levels 4x apart, as in 40x Aperio/TCGA files.
    """
    out = [img]
    for _ in range(levels - 1):
        a = out[-1]
        h, w = a.shape[0] // step * step, a.shape[1] // step * step
        a = a[:h, :w].astype(np.uint32).reshape(h // step, step, w // step, step, 3)
        out.append(((a.sum(axis=(1, 3)) + step * step // 2) // (step * step)).astype(np.uint8))
    return out


def write_tiff(
    path: str | Path,
    img: np.ndarray,
    *,
    levels: int = 3,
    tile: int = 128,
    mpp: float | None = 0.5,
    quality: int = 90,
    step: int = 2,
) -> Path:
    """Write ``img`` (level 0, H x W x 3 uint8) as a tiled JPEG pyramid of ``levels`` levels, each
    ``step`` times smaller than the one before (OpenSlide-readable); ``mpp``: level-0 tag (None: no tag)."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    levels_img = pyramid(img, levels, step)
    with tifffile.TiffWriter(path, bigtiff=img.size > 2**31) as tw:
        for k, a in enumerate(levels_img):
            kw = {}
            if mpp is not None:
                px_per_cm = 1e4 / (mpp * step**k)
                kw = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
            tw.write(
                a, tile=(tile, tile), photometric="rgb", compression="jpeg", compressionargs={"level": quality},
                subfiletype=0 if k == 0 else 1, metadata=None, **kw,
            )
    return path


def write_slide(
    path: str | Path,
    width: int = 1024,
    height: int = 768,
    tissue: Sequence[Rect] = ((128, 128, 512, 384), (640, 384, 896, 640)),
    *,
    levels: int = 3,
    tile: int = 128,
    mpp: float | None = 0.5,
    seed: int = 0,
) -> Path:
    """A synthetic slide with the given tissue rectangles (level-0 pixels); returns ``path``."""
    return write_tiff(path, synthetic_image(width, height, tissue, seed=seed), levels=levels, tile=tile, mpp=mpp)


def expected_cells(
    width: int, height: int, tissue: Sequence[Rect], size: int, stride: int | None = None, downsample: int = 1
) -> list[tuple[int, int]]:
    """Level-0 ``(x, y)`` of grid cells wholly inside a tissue rectangle, sorted by (y, x).

    The grid: ``size`` pixels at a level with integer ``downsample``, every ``stride`` level pixels.
    Pick rectangles aligned to the grid so that every cell is wholly inside or wholly outside tissue.
    """
    stride = stride or size
    lw, lh = width // downsample, height // downsample
    cells = []
    for ly in range(0, lh - size + 1, stride):
        for lx in range(0, lw - size + 1, stride):
            x, y, side = lx * downsample, ly * downsample, size * downsample
            if any(x0 <= x and x + side <= x1 and y0 <= y and y + side <= y1 for x0, y0, x1, y1 in tissue):
                cells.append((x, y))
    return sorted(cells, key=lambda c: (c[1], c[0]))


def asap_xml(
    tumour: Sequence[Sequence[tuple[float, float]]],
    exclusion: Sequence[Sequence[tuple[float, float]]] = (),
    *,
    tumour_group: str = "_0",
    exclusion_group: str = "_2",
) -> str:
    """ASAP / CAMELYON16 annotation XML text for tumour and exclusion polygons (level-0 ``(x, y)``)."""
    parts = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    n = 0
    for group, polys in ((tumour_group, tumour), (exclusion_group, exclusion)):
        for poly in polys:
            parts.append(f'\t\t<Annotation Name="Annotation {n}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">')
            parts.append("\t\t\t<Coordinates>")
            for i, (x, y) in enumerate(poly):
                parts.append(f'\t\t\t\t<Coordinate Order="{i}" X="{x}" Y="{y}" />')
            parts.append("\t\t\t</Coordinates>")
            parts.append("\t\t</Annotation>")
            n += 1
    parts += ["\t</Annotations>", "\t<AnnotationGroups>"]
    for g in (tumour_group, exclusion_group):
        parts.append(f'\t\t<Group Name="{g}" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>')
    parts += ["\t</AnnotationGroups>", "</ASAP_Annotations>", ""]
    return "\n".join(parts)


def rect_polygon(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    """The four corners of a rectangle, as an annotation polygon."""
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def real_tissue(width: int, height: int, *, x: int = 600, y: int = 700, prostate: bool = False) -> np.ndarray:
    """A ``height`` x ``width`` x 3 uint8 crop of a bundled slide (real H&E): the CMU skin sample (0.499
    um/px), or with ``prostate`` the prostate sample (0.5 um/px assumed; smoother, nearly band-limited
    tissue, where a box filter's blur shows most)."""
    from aeutils import sample_slides
    from aeutils.slides import open_slide

    with open_slide(sample_slides()[1 if prostate else 0]) as s:
        return s.read_region(x, y, 0, (width, height))


def upsampled_pyramid(path: str | Path, truth: np.ndarray, *, up: int = 2, mpp: float = 0.25, levels: int = 3,
                      step: int = 4, tile: int = 256, quality: int = 90, enlarge: str = "bicubic") -> Path:
    """A smooth "40x" slide made by enlarging real tissue: level 0 is ``truth`` enlarged ``up`` times
    (``enlarge``: PIL ``"bicubic"`` or ``"lanczos"``, never a box/nearest copy, which a box downsample
    would invert exactly) and tagged ``mpp`` um/px, JPEG ``quality``, levels ``step`` times apart (4:
    as TCGA 40x files). ``truth`` is then exactly the slide at ``mpp * up`` um/px (0.5 by default): the
    true pixels a resampling extractor should give back."""
    from PIL import Image

    h, w = truth.shape[:2]
    flt = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}[enlarge]
    big = np.asarray(Image.fromarray(truth).resize((w * up, h * up), flt))
    return write_tiff(path, big, levels=levels, tile=tile, mpp=mpp, quality=quality, step=step)
