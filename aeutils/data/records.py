"""Finding patch images: :func:`find_patches` -> a list of :class:`PatchRecord` (path, slide, level-0
``x``/``y`` of the top-left corner, size, level, downsample, label, slide height), from an extraction
output (``manifest.csv``) or a folder of images."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from aeutils.errors import PatchError
from aeutils.manifest import read_manifest  # torch-free: the one manifest reader

__all__ = ["IMAGE_EXTENSIONS", "PatchRecord", "find_patches"]

#: file name endings read as images in a plain folder
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

_NAME_RE = re.compile(r"^(?P<slide>.+)_(?P<x>\d+)_(?P<y>\d+)$")


@dataclass(frozen=True)
class PatchRecord:
    """One patch image on disk and where it came from (``slide``/``x``/``y``/``size``/``level``
    are ``None``/0 when unknown, e.g. a plain folder of arbitrary images)."""

    path: Path
    slide: str | None = None
    x: int | None = None
    y: int | None = None
    size: int | None = None
    level: int = 0
    downsample: float = 1.0
    label: str | None = None
    slide_height: int | None = None  # level-0 height of the slide, when the manifest stores it


def find_patches(source: str | os.PathLike[str]) -> list[PatchRecord]:
    """All patch images under ``source``: an extraction output (``manifest.csv``, read with
    :func:`aeutils.manifest.read_manifest`; paths relative to it) or a folder of images (flat or one
    sub-folder per class, searched recursively, sorted). Raises PatchError if there are none or the
    manifest is malformed."""
    root = Path(source)
    if not root.exists():
        raise PatchError(f"{root}: no such patch folder")
    if root.is_file() and root.name == "manifest.csv":
        root = root.parent
    if not root.is_dir():
        raise PatchError(f"{root}: expected a folder of patches (or an extraction output with manifest.csv)")
    manifest = root / "manifest.csv"
    records: list[PatchRecord] = []
    if manifest.is_file():
        for row in read_manifest(root):
            level = row["level"]
            ds = row.get("downsample")
            records.append(
                PatchRecord(
                    path=root / row["path"],
                    slide=row["slide"] or None,
                    x=row["x"],
                    y=row["y"],
                    size=row["size"],
                    level=level,
                    downsample=float(ds) if ds is not None else float(2**level),
                    label=None if row["label"] is None else str(row["label"]),
                    slide_height=row.get("slide_height"),
                )
            )
    else:
        for p in sorted(q for q in root.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file()):
            m = _NAME_RE.match(p.stem)
            label = p.parent.name if p.parent != root else None
            if m:
                records.append(PatchRecord(p, m["slide"], int(m["x"]), int(m["y"]), None, 0, 1.0, label))
            else:
                records.append(PatchRecord(p, label=label))
    if not records:
        raise PatchError(f"{root}: no patch images found (expected manifest.csv or {', '.join(IMAGE_EXTENSIONS)} files)")
    return records
