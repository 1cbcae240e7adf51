"""The train / validation / test split: one rule everywhere, so the shipped model never saw its held-out
tissue, and the tissue that reported numbers come from was never used for a choice.

* three roles: ``"train"`` (fitting), ``"val"`` (every choice: objective, size, epochs, the checkpoint
  kept, loss weights), ``"test"`` (reported numbers only). ``HELD_OUT_FRACTION`` (25 %) of the data is
  held out and split in two halves, validation first.
* fewer than ``REGION_SPLIT_MAX_SLIDES`` (4) slides (the bundled pair): **each slide by region**.
  The bottom 25 % of each slide's height is held out: its upper half (``0.75 H <= y`` and
  ``y + size * downsample <= 0.875 H``) is validation, its lower half (``y >= 0.875 H``) is test;
  training patches end above ``0.75 H`` (``y + size * downsample <= 0.75 H``). Patches straddling
  either line are dropped. A slide whose band halves are lower than one patch (``0.125 H < size *
  downsample``) keeps the whole band as validation and has no test region. Holding out a whole slide of two would leave one tissue to train on.
  ``H`` is the slide's level-0 height: ``slide_heights`` if given, else the ``slide_height``
  column of ``manifest.csv`` (written by :func:`aeutils.patches.extract`), else (older manifests,
  plain folders) the bundled sample slide's known height, else derived as the largest
  ``y + size * downsample`` of that slide's rows (never more than the true height, so the cut is
  at or above the true one and no training patch reaches into the true held-out region).
  ``downsample`` is the manifest's ``downsample`` column if present, else 1 at level 0 and
  ``2**level`` above (the usual pyramid).
* 4 or more slides: **by slide**, no slide in two roles. A stable hash of each slide name orders the
  slides; the first ``ceil(HELD_OUT_FRACTION * n_slides)`` are held out, alternately validation and
  test in that order (one held-out slide: validation only, no test slide).
* a plain folder of images: file names ``<slide>_<x>_<y>.<ext>`` (what ``extract`` writes) are
  split as above; other names by a stable hash of the file name (12.5 % validation, 12.5 % test).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Sequence

from aeutils.data.images import _image_side
from aeutils.data.records import PatchRecord
from aeutils.sample import SAMPLE_DIMENSIONS, SAMPLE_NAME

__all__ = ["HELD_OUT_FRACTION", "VALIDATION_FRACTION", "REGION_SPLIT_MAX_SLIDES", "SPLITS", "region_split", "split_records"]

#: fraction held out (a slide's bottom band, or a share of the slides): validation + test halves
HELD_OUT_FRACTION = 0.25
#: the older name of :data:`HELD_OUT_FRACTION` (the band's top line is where validation starts)
VALIDATION_FRACTION = HELD_OUT_FRACTION
#: below this many slides, every slide is split by region; from it on, by slide
REGION_SPLIT_MAX_SLIDES = 4
#: the roles a patch can be asked for ("all": no split)
SPLITS = ("train", "val", "test", "all")

_SAMPLE_STEM = Path(SAMPLE_NAME).stem


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def region_split(y: float, footprint: float, height: float, fraction: float = HELD_OUT_FRACTION) -> str | None:
    """Which role a patch of one slide has under the region rule: ``"train"`` if it ends above the
    line ``(1 - fraction) * height`` (``y + footprint <= line``; ``y`` its top, ``footprint`` =
    size x downsample, level-0 px), ``"val"`` if it lies in the upper half of the held-out band
    (``y >= line`` and ``y + footprint <= (1 - fraction / 2) * height``), ``"test"`` if it starts in
    the lower half (``y >= (1 - fraction / 2) * height``), ``None`` if it straddles a line (dropped).
    A band whose halves are lower than one footprint (a short slide) is all validation, no test."""
    line, mid = (1.0 - fraction) * height, (1.0 - fraction / 2.0) * height
    if y >= line:
        if footprint > mid - line:
            return "val"
        if y >= mid:
            return "test"
        return "val" if y + footprint <= mid else None
    if y + footprint <= line:
        return "train"
    return None


def _slide_height(name: str, recs: Sequence[PatchRecord], slide_heights: dict[str, int] | None) -> float:
    """Level-0 height of slide ``name``: given, stored in the manifest, the sample's, or derived."""
    if slide_heights and name in slide_heights:
        return float(slide_heights[name])
    stored = {r.slide_height for r in recs if r.slide_height}
    if stored:
        return float(max(stored))
    if name == _SAMPLE_STEM:
        return float(SAMPLE_DIMENSIONS[1])
    return float(max((r.y or 0) + (r.size or _image_side(r.path)) * r.downsample for r in recs))


def split_records(
    records: Sequence[PatchRecord],
    split: str,
    *,
    fraction: float = HELD_OUT_FRACTION,
    slide_heights: dict[str, int] | None = None,
) -> list[PatchRecord]:
    """The ``split`` ("train", "val", "test" or "all") subset of ``records`` by the module's rule
    (each slide by region below :data:`REGION_SPLIT_MAX_SLIDES` slides, else by slide). Order is kept."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return list(records)
    located = [r for r in records if r.slide is not None and r.y is not None]
    unlocated = [r for r in records if not (r.slide is not None and r.y is not None)]
    side: dict[Path, str | None] = {}
    slides = sorted({r.slide for r in located}, key=lambda s: (_stable_hash(s), s))  # type: ignore[arg-type]
    if len(slides) >= REGION_SPLIT_MAX_SLIDES:
        held = slides[: max(1, math.ceil(fraction * len(slides)))]
        role = {name: ("val" if i % 2 == 0 else "test") for i, name in enumerate(held)}
        for r in located:
            side[r.path] = role.get(r.slide, "train")  # type: ignore[arg-type]
    else:
        for name in slides:
            recs = [r for r in located if r.slide == name]
            height = _slide_height(name, recs, slide_heights)  # type: ignore[arg-type]
            for r in recs:
                fp = (r.size or _image_side(r.path)) * r.downsample
                side[r.path] = region_split(float(r.y), fp, height, fraction)  # type: ignore[arg-type]
    for r in unlocated:
        u = (_stable_hash(r.path.name) % 10_000) / 10_000
        side[r.path] = "val" if u < fraction / 2 else "test" if u < fraction else "train"
    return [r for r in records if side.get(r.path) == split]
