"""CAMELYON16 tumour annotations (ASAP XML) and the tumour fraction of grid cells.

ASAP writes one ``<Annotation Type="Polygon" PartOfGroup="...">`` per region with
``<Coordinates><Coordinate Order="0" X=".." Y=".."/>...`` in level-0 pixels. In CAMELYON16, groups
``_0``, ``_1`` and ``Tumor`` are tumour; ``_2`` and ``Exclusion`` are normal islands cut out of the
tumour regions. Polygons are rasterised (pixel centres, scikit-image) onto a reduced-resolution mask;
a cell's tumour fraction is the masked share of its area, and its label is
``1 if tumour_fraction >= TUMOUR_THRESHOLD else 0``.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aeutils.errors import AnnotationError

__all__ = [
    "TUMOUR_GROUPS",
    "EXCLUSION_GROUPS",
    "TUMOUR_THRESHOLD",
    "Annotations",
    "read_asap_xml",
    "annotation_for_slide",
    "TumourMask",
]

TUMOUR_GROUPS = frozenset({"_0", "_1", "tumor", "tumour"})
EXCLUSION_GROUPS = frozenset({"_2", "exclusion"})
#: A cell is labelled tumour (1) when at least this fraction of its area is inside tumour polygons.
TUMOUR_THRESHOLD = 0.5


@dataclass
class Annotations:
    """Polygons of one slide, level-0 pixel coordinates (each an N x 2 float array of ``(x, y)``)."""

    path: Path | None
    tumour: list[np.ndarray] = field(default_factory=list)
    exclusion: list[np.ndarray] = field(default_factory=list)

    def mask(self, dimensions: tuple[int, int], max_side: int = 4096, min_scale: float = 0.0) -> "TumourMask":
        """Rasterise onto a mask of at most ``max_side`` pixels a side (``dimensions`` = level-0 ``(w, h)``).

        ``min_scale`` asks for at least that many mask pixels per level-0 pixel (still capped by ``max_side``).
        """
        from skimage.draw import polygon as draw_polygon

        w0, h0 = dimensions
        s = max(min_scale, 0.0)
        s = min(max(s, 1e-9), 1.0, max_side / max(w0, h0)) if s > 0 else min(1.0, max_side / max(w0, h0))
        W, H = max(1, int(round(w0 * s))), max(1, int(round(h0 * s)))
        sx, sy = W / w0, H / h0
        mask = np.zeros((H, W), dtype=bool)
        for polys, value in ((self.tumour, True), (self.exclusion, False)):
            for poly in polys:
                # Mask pixel (i, j) covers level-0 [j/sx, (j+1)/sx); it is inside if its centre is.
                rr, cc = draw_polygon(poly[:, 1] * sy - 0.5, poly[:, 0] * sx - 0.5, shape=(H, W))
                mask[rr, cc] = value
        return TumourMask(mask=mask, scale=(sx, sy))


@dataclass(frozen=True)
class TumourMask:
    """Boolean tumour mask over the whole slide; ``scale = (sx, sy)`` mask pixels per level-0 pixel."""

    mask: np.ndarray
    scale: tuple[float, float]

    def fractions(self, xs: np.ndarray, ys: np.ndarray, w: float, h: float) -> np.ndarray:
        """Tumour fraction (0..1) of level-0 rectangles ``[x, x+w) x [y, y+h)`` (one per ``xs[i], ys[i]``)."""
        from aeutils.tissue import TissueMask

        return TissueMask(self.mask, self.scale, 0.0).fractions(xs, ys, w, h)


def read_asap_xml(path: str | os.PathLike[str]) -> Annotations:
    """Read an ASAP / CAMELYON16 XML file. Raises :class:`AnnotationError` naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: no such annotation file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(f"{path}: malformed XML ({exc})") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(f"{path}: not an ASAP annotation file (root element <{root.tag}>)")
    ann = Annotations(path=path)
    for i, node in enumerate(root.iter("Annotation")):
        group = (node.get("PartOfGroup") or "").strip().lower()
        kind = (node.get("Type") or "Polygon").strip().lower()
        if group in TUMOUR_GROUPS:
            target = ann.tumour
        elif group in EXCLUSION_GROUPS:
            target = ann.exclusion
        else:
            continue  # other groups (e.g. "None", user groups) carry no label
        if kind not in ("polygon", "spline", "rectangle"):
            continue  # dots / lines have no area
        pts = []
        for c in node.iter("Coordinate"):
            try:
                order = int(float(c.get("Order", len(pts))))
                pts.append((order, float(c.get("X", "")), float(c.get("Y", ""))))
            except ValueError:
                name = node.get("Name") or f"#{i}"
                raise AnnotationError(f"{path}: annotation {name!r} has a coordinate without numeric X/Y") from None
        if len(pts) < 3:
            name = node.get("Name") or f"#{i}"
            raise AnnotationError(f"{path}: annotation {name!r} has {len(pts)} coordinates (a polygon needs 3)")
        pts.sort(key=lambda t: t[0])
        target.append(np.array([(x, y) for _, x, y in pts], dtype=np.float64))
    return ann


def annotation_for_slide(source: str | os.PathLike[str], slide_name: str) -> Annotations:
    """Annotations of the slide with stem ``slide_name`` from ``source`` (an XML file or a folder).

    A folder is searched for ``<slide_name>.xml``; a slide without a file there has no tumour
    (CAMELYON16 ships XML only for tumour slides), so every cell gets label 0. A missing source
    raises :class:`AnnotationError`.
    """
    source = Path(source)
    if source.is_dir():
        candidate = source / f"{slide_name}.xml"
        return read_asap_xml(candidate) if candidate.is_file() else Annotations(path=None)
    if not source.exists():
        raise AnnotationError(f"{source}: no such annotation file or folder")
    return read_asap_xml(source)
