"""Fake extraction outputs for the training tests (imported as ``from patchdirs import write_patches``)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


def write_patches(
    root: Path, size: int = 41, height: int = 200, seed: int = 0, xs: Sequence[int] = (0, 20, 40)
) -> Path:
    """A one-slide extraction output under ``root``: smooth random ``size`` px PNG patches (random
    (size//4+1)-px images upscaled bilinearly) at level-0 ``x`` in ``xs`` and ``y`` every 20 px down
    to ``height``, plus manifest.csv with the extract columns. Returns ``root``."""
    rng = np.random.default_rng(seed)
    (root / "unlabeled").mkdir(parents=True, exist_ok=True)
    rows = []
    for y in range(0, height - size + 1, 20):
        for x in xs:
            small = rng.integers(0, 256, (size // 4 + 1, size // 4 + 1, 3), dtype=np.uint8)
            rel = f"unlabeled/s1_{x}_{y}.png"
            Image.fromarray(small).resize((size, size), Image.BILINEAR).save(root / rel)
            rows.append(dict(path=rel, slide="s1", level=0, x=x, y=y, size=size, mpp=0.5, tissue_fraction=1.0,
                             tumour_fraction="", label=""))
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root
