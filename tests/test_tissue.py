"""aeutils.tissue: saturation/Otsu tissue mask and per-rectangle tissue fractions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aeutils.slides import open_slide
from aeutils.tissue import TissueMask, detect_tissue, saturation, tissue_mask
from synthetic import synthetic_image, write_slide


def test_mask_finds_the_rectangles() -> None:
    img = synthetic_image(400, 300, [(50, 40, 150, 140), (250, 150, 350, 250)])
    mask, thr = tissue_mask(img)
    truth = np.zeros((300, 400), bool)
    truth[40:140, 50:150] = True
    truth[150:250, 250:350] = True
    assert 0.07 <= thr < 0.6
    assert (mask == truth).mean() > 0.995


def test_saturation_matches_skimage_rgb2hsv() -> None:
    from skimage.color import rgb2hsv

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    img[0, :3] = [[0, 0, 0], [7, 7, 7], [255, 255, 255]]  # black (max 0) and greys: saturation 0
    sat = saturation(img)
    assert sat.shape == (64, 48) and sat.dtype == np.float32
    np.testing.assert_allclose(sat, rgb2hsv(img)[..., 1], atol=1e-6)
    assert (sat[0, :3] == 0).all()


def test_blank_glass_and_black_padding_are_not_tissue() -> None:
    img = synthetic_image(200, 200, [])
    img[:, :50] = 0  # out-of-slide padding
    mask, _ = tissue_mask(img)
    assert not mask.any()


def test_small_specks_removed_and_holes_filled() -> None:
    img = synthetic_image(400, 400, [(100, 100, 300, 300), (10, 10, 13, 13)])
    img[195:200, 195:200] = 242  # a 5 x 5 hole of glass inside tissue
    mask, _ = tissue_mask(img)
    assert not mask[:20, :20].any()
    assert mask[190:210, 190:210].all()


def test_fractions_exact_on_mask() -> None:
    m = np.zeros((100, 200), bool)
    m[:, :100] = True
    tm = TissueMask(m, scale=(0.5, 0.5), threshold=0.1)  # mask pixel = 2 level-0 pixels
    assert tm.fraction(0, 0, 100, 100) == 1.0
    assert tm.fraction(100, 0, 200, 100) == pytest.approx(0.5)
    assert tm.fraction(300, 0, 100, 100) == 0.0
    assert tm.fraction(390, 190, 100, 100) == 0.0  # partly outside: outside counts as no tissue
    np.testing.assert_allclose(tm.fractions(np.array([0, 100, 300]), np.array([0, 0, 0]), 200, 100), [1.0, 0.5, 0.0])


def test_detect_tissue_on_sample(sample_slide_path: Path) -> None:
    with open_slide(sample_slide_path) as s:
        thumb, tm = detect_tissue(s, 512)
    assert thumb.shape[:2] == tm.mask.shape
    assert 0.15 < tm.mask.mean() < 0.6  # a strip of skin on white glass
    assert tm.scale[0] == pytest.approx(thumb.shape[1] / 2220)


def test_detect_tissue_on_synthetic_slide(tmp_path: Path) -> None:
    p = write_slide(tmp_path / "s.tiff", 512, 512, [(0, 0, 256, 512)], levels=2)
    with open_slide(p) as s:
        _, tm = detect_tissue(s, 256)
    assert tm.fraction(0, 0, 256, 512) > 0.97
    assert tm.fraction(256, 0, 256, 512) < 0.03
