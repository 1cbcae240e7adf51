"""aeutils.data: splits (by slide, by region), PatchDataset augmentations, corrupt images, loaders."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aeutils.data import (
    HELD_OUT_FRACTION,
    VALIDATION_FRACTION,
    PatchDataset,
    find_patches,
    hed_jitter,
    load_patches,
    region_split,
    split_records,
)
from aeutils.errors import PatchError

COLUMNS = ["path", "slide", "level", "x", "y", "size", "mpp", "tissue_fraction", "tumour_fraction", "label"]


def write_patch_dir(
    root: Path, slides: dict[str, int], *, size: int = 41, stride: int = 40, cols: int = 2, seed: int = 0
) -> Path:
    """A fake extraction output: for each slide name -> height (level-0 px), a grid of random
    PNG patches (``cols`` wide) down the whole height, plus manifest.csv."""
    rng = np.random.default_rng(seed)
    rows = []
    for slide, height in slides.items():
        for y in range(0, height - size + 1, stride):
            for c in range(cols):
                x = c * stride
                rel = f"unlabeled/{slide}_{x}_{y}.png"
                (root / "unlabeled").mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / rel)
                rows.append(dict(path=rel, slide=slide, level=0, x=x, y=y, size=size, mpp=0.5,
                                 tissue_fraction=1.0, tumour_fraction=0.0, label=""))
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return root


def test_region_split_rule() -> None:
    h = 400  # held-out band from 300; validation half 300-350, test half from 350
    assert region_split(300, 41, h) == "val"
    assert region_split(309, 41, h) == "val"  # ends at 350
    assert region_split(310, 41, h) is None  # straddles the validation/test line
    assert region_split(350, 41, h) == "test"
    assert region_split(259, 41, h) == "train"
    assert region_split(260, 41, h) is None  # straddles
    assert region_split(330, 51, h) == "val"  # halves lower than a patch: the band is validation
    assert region_split(360, 51, h) == "val"
    assert VALIDATION_FRACTION == HELD_OUT_FRACTION == 0.25


def test_two_slides_split_by_region_three_roles(tmp_path: Path) -> None:
    """The bundled pair: each slide keeps train, validation and test regions, none shared."""
    write_patch_dir(tmp_path, {"skin": 801, "prostate": 1201}, stride=20)
    recs = find_patches(tmp_path)
    roles = {k: split_records(recs, k) for k in ("train", "val", "test")}
    heights = {"skin": 801, "prostate": 1201}
    for name, h in heights.items():
        tr = [r for r in roles["train"] if r.slide == name]
        va = [r for r in roles["val"] if r.slide == name]
        te = [r for r in roles["test"] if r.slide == name]
        assert tr and va and te, name
        assert all(r.y + r.size <= 0.75 * h for r in tr)
        assert all(r.y >= 0.75 * h and r.y + r.size <= 0.875 * h for r in va)
        assert all(r.y >= 0.875 * h for r in te)
    paths = [{r.path for r in v} for v in roles.values()]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])


def test_single_slide_split_by_region(tmp_path: Path) -> None:
    write_patch_dir(tmp_path, {"s1": 801}, stride=10)
    recs = find_patches(tmp_path)
    train, val = split_records(recs, "train"), split_records(recs, "val")
    test = split_records(recs, "test")
    # derived height = max(y + size) = 760 + 41 = 801 -> lines 600.75 and 700.9
    assert train and val and test
    assert all(r.y + r.size <= 0.75 * 801 for r in train)
    assert all(r.y >= 0.75 * 801 and r.y + r.size <= 0.875 * 801 for r in val)
    assert all(r.y >= 0.875 * 801 for r in test)
    assert not {r.path for r in train} & {r.path for r in val}
    assert len(train) + len(val) + len(test) < len(recs)  # the straddling row is dropped
    # an explicit slide height moves the line
    val_big = split_records(recs, "val", slide_heights={"s1": 2000})
    assert val_big == []


def test_single_slide_split_uses_the_stored_slide_height(tmp_path: Path) -> None:
    """A manifest with a ``slide_height`` column (what extract writes) splits at 0.75 x that height,
    not at the height guessed from the patches; an explicit ``slide_heights`` still wins."""
    write_patch_dir(tmp_path, {"s1": 401})  # patches down to y + size = 401
    with open(tmp_path / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, [*COLUMNS, "downsample", "slide_width", "slide_height"])
        w.writeheader()
        w.writerows({**r, "downsample": "1", "slide_width": "1000", "slide_height": "200"} for r in rows)
    recs = find_patches(tmp_path)
    assert {r.slide_height for r in recs} == {200}
    train, val = split_records(recs, "train"), split_records(recs, "val")
    assert train and val
    assert all(r.y + r.size <= 150 for r in train)  # line 0.75 * 200 = 150, not 0.75 * 401
    assert all(r.y >= 150 for r in val)  # halves of 25 px < 41 px: the whole band is validation
    assert min(r.y for r in val) == 160  # the first grid row below the stored line (guessed: 320)
    assert not split_records(recs, "test")
    assert min(r.y for r in split_records(recs, "test", slide_heights={"s1": 401})) == 360


def test_multi_slide_split_by_slide(tmp_path: Path) -> None:
    write_patch_dir(tmp_path, {f"slide{i}": 121 for i in range(5)})
    recs = find_patches(tmp_path)
    train, val, test = (split_records(recs, k) for k in ("train", "val", "test"))
    assert len(train) + len(val) + len(test) == len(recs)  # nothing dropped
    tr_slides, va_slides, te_slides = ({r.slide for r in k} for k in (train, val, test))
    assert not tr_slides & va_slides and not tr_slides & te_slides and not va_slides & te_slides
    assert len(va_slides) == 1 and len(te_slides) == 1  # ceil(0.25 * 5) = 2 held out, alternately


def test_plain_folder_with_and_without_coordinates(tmp_path: Path) -> None:
    write_patch_dir(tmp_path / "ext", {"s1": 401})
    (tmp_path / "ext" / "manifest.csv").unlink()  # now just a folder of <slide>_<x>_<y>.png
    recs = find_patches(tmp_path / "ext")
    assert all(r.slide == "s1" and r.y is not None for r in recs)
    assert split_records(recs, "test") and split_records(recs, "train")
    # the training tests' fixture (tests/patchdirs.py): 181 px high, 41 px patches: band all validation
    short = write_patch_dir(tmp_path / "short", {"s1": 181}, stride=20)
    assert split_records(find_patches(short), "val") and not split_records(find_patches(short), "test")
    flat = tmp_path / "flat" / "classA"
    flat.mkdir(parents=True)
    for i in range(20):
        Image.fromarray(np.full((21, 21, 3), i, np.uint8)).save(flat / f"img{i}.png")
    frecs = find_patches(tmp_path / "flat")
    assert len(frecs) == 20 and frecs[0].label == "classA"
    tr, va, te = (split_records(frecs, k) for k in ("train", "val", "test"))
    assert len(tr) + len(va) + len(te) == 20 and 0 < len(va) + len(te) < 20


def test_dataset_crop_and_augment(tmp_path: Path) -> None:
    write_patch_dir(tmp_path, {"s1": 801}, stride=20)
    ds = PatchDataset(tmp_path, "train", crop=33)
    assert ds.augment and len(ds) > 0
    torch.manual_seed(0)
    a = ds[0]
    assert a.shape == (3, 33, 33) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    outs = {tuple(ds[0].flatten()[:50].tolist()) for _ in range(8)}
    assert len(outs) > 1  # random crops / flips / rotations differ
    # reproducible under the same torch seed
    torch.manual_seed(3)
    b1 = ds[1]
    torch.manual_seed(3)
    assert torch.equal(b1, ds[1])
    # validation: centred, deterministic, no augmentation
    val = PatchDataset(tmp_path, "val", crop=33)
    assert not val.augment and torch.equal(val[0], val[0])
    full = torch.from_numpy(np.array(Image.open(val.records[0].path))).permute(2, 0, 1).float() / 255
    assert torch.allclose(val[0], full[:, 4:37, 4:37])


def test_augmentations_are_pixel_permutations(tmp_path: Path) -> None:
    """Flips and rotations only move pixels: the crop's pixel multiset is kept (no interpolation)."""
    write_patch_dir(tmp_path, {"s1": 401}, size=33)
    ds = PatchDataset(tmp_path, "train", crop=33)
    plain = PatchDataset(tmp_path, "train", crop=33, augment=False)
    for seed in range(4):
        torch.manual_seed(seed)
        aug = ds[2]
        assert torch.equal(aug.flatten(1).sort(dim=1).values, plain[2].flatten(1).sort(dim=1).values)


def test_invalid_crop_sizes(tmp_path: Path) -> None:
    write_patch_dir(tmp_path, {"s1": 401})
    with pytest.raises(ValueError, match="4k\\+1"):
        PatchDataset(tmp_path, "train", crop=32)
    ds = PatchDataset(tmp_path, "train", crop=45)  # bigger than the 41 px images
    with pytest.raises(PatchError, match="smaller than the crop"):
        ds[0]


def test_stain_jitter_is_mild_and_random(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(60, 230, (17, 17, 3), dtype=np.uint8)
    same = hed_jitter(rgb, [0, 0, 0], [0, 0, 0])
    assert np.abs(same - rgb / 255.0).max() < 1e-4  # zero jitter: the HED round trip is the identity
    moved = hed_jitter(rgb, [0.05, -0.05, 0.0], [0.005, -0.005, 0.0])
    diff = np.abs(moved - rgb / 255.0).mean()
    assert 0.002 < diff < 0.08
    write_patch_dir(tmp_path, {"s1": 401})
    ds = PatchDataset(tmp_path, "train", crop=33, stain_jitter=0.05)
    torch.manual_seed(0)
    x = ds[0]
    assert x.shape == (3, 33, 33) and x.dtype == torch.float32


def test_corrupt_image_fails_naming_the_path(tmp_path: Path) -> None:
    write_patch_dir(tmp_path, {"s1": 401})
    ds = PatchDataset(tmp_path, "train", crop=33)
    bad = ds.records[0].path
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    with pytest.raises(PatchError, match=str(bad.name)):
        ds[0]
    ds.records[1].path.unlink()
    with pytest.raises(PatchError, match="missing"):
        ds[1]
    # through a DataLoader with a worker process: the error surfaces, no hang
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, timeout=60)
    with pytest.raises(PatchError, match="corrupt or unreadable"):
        next(iter(loader))


def test_find_patches_errors(tmp_path: Path) -> None:
    with pytest.raises(PatchError, match="no such"):
        find_patches(tmp_path / "nope")
    with pytest.raises(PatchError, match="no patch images"):
        find_patches(tmp_path)


def test_load_patches_sources(tmp_path: Path) -> None:
    write_patch_dir(tmp_path, {"s1": 801}, stride=20)
    x = load_patches(tmp_path, n=3, size=33)
    assert x.shape == (3, 3, 33, 33) and x.max() <= 1
    t = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    y = load_patches(t, size=37)
    assert y.shape == (2, 3, 37, 37) and torch.allclose(y, t[:, :, 1:38, 1:38].float() / 255)
    assert load_patches(tmp_path, split="val", size=33).shape[0] == len(split_records(find_patches(tmp_path), "val"))
    with pytest.raises(PatchError, match="smaller"):
        load_patches(tmp_path, n=1, size=45)


def test_sample_patches_are_held_out_tissue_and_deterministic() -> None:
    from aeutils.data import _sample_cells, sample_patches, sample_slide
    from aeutils.sample import SAMPLE_DIMENSIONS

    assert sample_slide().name == "CMU-1-Small-Region.svs"  # re-exported for the notebooks
    x = sample_patches(4, split="val", seed=0)
    assert x.shape == (4, 3, 181, 181) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert x.mean() < 0.9  # tissue, not white background
    assert torch.equal(sample_patches(2, split="val", seed=0), x[:2])  # deterministic, prefix-stable
    assert not torch.equal(sample_patches(4, split="val", seed=1), x)
    line = (1 - VALIDATION_FRACTION) * SAMPLE_DIMENSIONS[1]
    mid = (1 - VALIDATION_FRACTION / 2) * SAMPLE_DIMENSIONS[1]
    val_cells, train_cells = _sample_cells(181, "val", 181), _sample_cells(181, "train", 181)
    test_cells = _sample_cells(181, "test", 181)
    assert val_cells and train_cells and test_cells
    assert all(y >= line and y + 181 <= mid for _, y in val_cells)
    assert all(y >= mid for _, y in test_cells)
    assert all(y + 181 <= line for _, y in train_cells)
    with pytest.raises(ValueError, match="split"):
        sample_patches(1, split="holdout")
    p = sample_patches(2, split="test", slide=1)  # the prostate's test half (half-stride cells)
    assert p.shape == (2, 3, 181, 181) and p.mean() < 0.9
