"""aeutils.tiffread: tiled TIFF levels decoded directly give OpenSlide's pixels exactly, are used only
where that was verified, and fall back to OpenSlide (pixels and errors) everywhere else."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from aeutils import tiffread
from aeutils.patches import extract, read_manifest
from aeutils.patches.runner import close_handles, read_level, slide_handle
from synthetic import real_tissue, upsampled_pyramid, write_tiff


@pytest.fixture(autouse=True)
def _fresh_readers():
    tiffread.close_readers()
    yield
    close_handles()


@pytest.fixture(scope="module")
def tissue_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real H&E, 3 levels 2x apart, JPEG (YCbCr) tiles of 128 px with ragged right/bottom edge tiles."""
    img = np.tile(real_tissue(400, 300), (2, 2, 1))[:590, :770]
    return write_tiff(tmp_path_factory.mktemp("tr") / "t.tiff", img, levels=3, tile=128, step=2)


def _regions(w: int, h: int, n: int = 12, seed: int = 0) -> list[tuple[int, int, int, int]]:
    rng = random.Random(seed)
    out = [(0, 0, w, h), (w - 37, h - 29, 37, 29), (0, h - 1, w, 1)]
    for _ in range(n):
        rw, rh = rng.randint(1, min(w, 300)), rng.randint(1, min(h, 300))
        out.append((rng.randint(0, w - rw), rng.randint(0, h - rh), rw, rh))
    return out


def _osr_rgb(osr: openslide.OpenSlide, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    ds = int(osr.level_downsamples[level])
    return np.asarray(osr.read_region((x * ds, y * ds), level, (w, h)).convert("RGB"))


@pytest.mark.parametrize("which", ["tissue_tiff", "svs", "prostate", "zlib"])
def test_tile_reads_equal_openslide(which: str, tissue_tiff: Path, sample_slide_path: Path, tmp_path: Path) -> None:
    from aeutils import sample_slides

    if which == "tissue_tiff":
        path = tissue_tiff
    elif which == "svs":  # Aperio, RGB JPEG with shared JPEGTables, 240 px tiles
        path = sample_slide_path
    elif which == "prostate":
        path = next(p for p in sample_slides() if "prostate" in p.name)
    else:  # lossless tiles: the reader is not JPEG-only
        import tifffile

        path = tmp_path / "z.tiff"
        img = real_tissue(300, 200)
        with tifffile.TiffWriter(path) as tw:
            tw.write(img, tile=(64, 64), photometric="rgb", compression="zlib", metadata=None)
    osr = openslide.OpenSlide(str(path))
    used = 0
    for level in range(osr.level_count):
        r = tiffread.tile_reader(path, level, osr)
        if not float(osr.level_downsamples[level]).is_integer():
            assert r is None and "not an integer" in tiffread.why_not(path, level)
            continue
        assert r is not None, tiffread.why_not(path, level)
        used += 1
        w, h = osr.level_dimensions[level]
        for x, y, rw, rh in _regions(w, h):
            np.testing.assert_array_equal(r.read(x, y, rw, rh), _osr_rgb(osr, level, x, y, rw, rh))
        assert not r.covers(w - 10, 0, 11, 5) and not r.covers(-1, 0, 5, 5)
        with pytest.raises(ValueError):
            r.read(w - 10, 0, 11, 5)
    assert used >= 1
    osr.close()


def test_a_reader_that_disagrees_is_not_used(tissue_tiff: Path, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    """Verification really compares pixels: a decode off by one level somewhere means OpenSlide reads."""
    real_read = tiffread.TileReader.read

    def off_by_one(self, x, y, w, h):
        a = real_read(self, x, y, w, h).copy()
        a[h // 2, w // 2, 1] ^= 1
        return a

    monkeypatch.setattr(tiffread.TileReader, "read", off_by_one)
    osr = openslide.OpenSlide(str(tissue_tiff))
    assert tiffread.tile_reader(tissue_tiff, 0, osr) is None
    assert "differs from OpenSlide" in tiffread.why_not(tissue_tiff, 0)
    assert "max abs diff 1" in tiffread.why_not(tissue_tiff, 0)
    # ... and extraction then gives OpenSlide's pixels, not the broken reader's.
    tiffread.close_readers()
    extract(tissue_tiff, tmp_path / "o", patch_size=64, workers=1, progress=False, log=lambda m: None)
    rows = read_manifest(tmp_path / "o")
    assert rows
    for r in rows[:20]:
        x, y = int(r["x"]), int(r["y"])
        want = np.asarray(osr.read_region((x, y), 0, (64, 64)).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / r["path"])), want)
    osr.close()


def test_other_vendors_are_left_to_openslide(tissue_tiff: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiffread, "VENDORS", ("aperio",))
    osr = openslide.OpenSlide(str(tissue_tiff))
    assert tiffread.tile_reader(tissue_tiff, 0, osr) is None
    assert "'generic-tiff' is not a plain tiled TIFF" in tiffread.why_not(tissue_tiff, 0)
    assert tiffread.describe(tissue_tiff, 0, osr).startswith("OpenSlide (")
    osr.close()


@pytest.mark.parametrize("mpp", [None, 0.5])
def test_extract_writes_the_same_bytes_with_and_without_tile_decoding(
        mpp: float | None, tissue_tiff: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slide = tissue_tiff
    if mpp is not None:  # a 40x pyramid: level 0 read and downsampled x2
        slide = upsampled_pyramid(tmp_path / "tcga.tiff", real_tissue(724, 543), up=2, mpp=0.25, step=4)
    calls = {"tiles": 0}
    real_read = tiffread.TileReader.read

    def counting(self, *a):
        calls["tiles"] += 1
        return real_read(self, *a)

    monkeypatch.setattr(tiffread.TileReader, "read", counting)
    kw = dict(patch_size=64, mpp=mpp, workers=1, progress=False, log=lambda m: None)
    extract(slide, tmp_path / "fast", **kw)
    fast_calls = calls["tiles"]
    monkeypatch.setattr(tiffread, "VENDORS", ())
    extract(slide, tmp_path / "osr", **kw)
    assert fast_calls > 2 and calls["tiles"] == fast_calls  # the second run never used the tile reader
    a, b = read_manifest(tmp_path / "fast"), read_manifest(tmp_path / "osr")
    assert len(a) == len(b) > 3
    for ra, rb in zip(a, b):
        assert ra["path"] == rb["path"]
        assert (tmp_path / "fast" / ra["path"]).read_bytes() == (tmp_path / "osr" / rb["path"]).read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_a_bad_tile_gives_openslides_error(damage: str, tissue_tiff: Path, tmp_path: Path) -> None:
    """A tile that reads short (file truncated after it was opened) or fails to decode: the tile reader
    gives up and OpenSlide names the problem, exactly as without it."""
    import tifffile

    bad = tmp_path / "bad.tiff"
    shutil.copy(tissue_tiff, bad)
    with tifffile.TiffFile(bad) as tf:
        page = tf.pages[0]
        k = int(np.argmax(page.dataoffsets)) if damage == "truncated" else 0
        off, n = int(page.dataoffsets[k]), int(page.databytecounts[k])
        tw, th, nx = page.tilewidth, page.tilelength, (page.imagewidth + page.tilewidth - 1) // page.tilewidth
    osr = slide_handle(str(bad))
    assert tiffread.tile_reader(bad, 0, osr) is not None  # verified on the intact file
    with open(bad, "r+b") as f:
        if damage == "truncated":
            f.truncate(off + n // 2)
        else:
            f.seek(off + n // 2)
            f.write(bytes(n - n // 2))
    tx, ty = k % nx, k // nx
    with pytest.raises(openslide.OpenSlideError):
        read_level(str(bad), 0, 1.0, tx * tw, ty * th, 16, 16)


def test_verification_never_breaks_the_callers_handle(tissue_tiff: Path, tmp_path: Path) -> None:
    """A file damaged only where no patch is read (here: the bottom-right corner tile, which the
    verification reads) still extracts its other patches: the check's failure stays in its own handle."""
    import tifffile

    with tifffile.TiffFile(tissue_tiff) as tf:
        page = tf.pages[0]
        corner = len(page.dataoffsets) - 1
        off, n = int(page.dataoffsets[corner]), int(page.databytecounts[corner])
    bad = tmp_path / "corner.tiff"
    shutil.copy(tissue_tiff, bad)
    with open(bad, "r+b") as f:
        f.seek(off + n // 2)
        f.write(bytes(n - n // 2))
    osr = slide_handle(str(bad))
    assert tiffread.tile_reader(bad, 0, osr) is None
    assert "verification read failed" in tiffread.why_not(bad, 0)
    got = read_level(str(bad), 0, 1.0, 0, 0, 100, 80)
    np.testing.assert_array_equal(got, np.asarray(osr.read_region((0, 0), 0, (100, 80)).convert("RGB")))


def test_thumbnails_masks_and_annotations_still_read_by_openslide(sample_slide_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Only extraction's strip reads use the tile reader: the thumbnail, tissue mask and grid planning
    (annotations included) and aeutils.slides reads never build one."""
    from aeutils.patches import plan_slide
    from aeutils.slides import open_slide

    built = []
    real_init = tiffread.TileReader.__init__

    def counting(self, *a, **k):
        built.append(a[0])
        real_init(self, *a, **k)

    monkeypatch.setattr(tiffread.TileReader, "__init__", counting)
    plan = plan_slide(sample_slide_path, 128, 0, None)
    with open_slide(sample_slide_path) as s:
        s.thumbnail(256)
        s.read_region(0, 0, 0, (64, 64))
    assert plan.cells and built == []
