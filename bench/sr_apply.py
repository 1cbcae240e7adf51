"""Whole-slide x4 super-resolution: ``sr apply`` end to end vs a naive loop, and the applied slide's quality
against the true pixels, in one run, with the CPU named.

Speed, on a slide that looks like a whole-slide image (mostly glass): ``bench/encode_slide.py``'s sparse
slide (3 copies of the bundled CMU sample on an 8704 x 7168 px canvas of glass, cached under ``bench/out/``;
``--speed-slide FILE`` for another), read at 2 um/px (``--mpp 2 --assume-mpp 0.5``: level 0 downsampled exactly
x4, antialiased, with ``sr apply``'s filter: :data:`aeutils.sr.degrade.SLIDE_FILTER`, PIL's bicubic, which
matches the generator's training degradation; ``--resample-filter`` for another). Quality, on a bundled slide
(``--slide``: 0 the CMU skin region, 1 the prostate): its level 0 alone (:func:`level0_only`; the prostate's own
2 um/px pyramid level, read as it is, is not the training degradation and cost the shipped generator 0.33 dB
against bicubic) read the same way, so its x4 super-resolution lands on the true 0.5 um/px level-0 pixels.

* **naive**: the loop a user writes without the library: for every 64 px LR tile of the slide at 2 um/px
  (read from the same scaled source), the generator on that tile alone (fp32, batch 1, no overlap: each tile
  zero-padded on its own, seams at every border), pasted into a full-size array, saved with PIL (PNG).
* **aeutils**: :func:`aeutils.sr.apply.sr_slide` as ``python -m aeutils sr apply SLIDE --mpp 2`` runs it
  (tissue mask, strip reads, seamless overlapping tiles, the measured speed choice, work files, pyramidal
  JPEG-tiled TIFF written).

Both arms' times are wall seconds of the whole call (reads, network, writes); the ratio is naive / aeutils.

Quality: the applied TIFF against the slide's level-0 pixels on **test-role regions** (the lower half of the
held-out bottom band, :func:`aeutils.data.region_split`; never seen by the shipped generator or any choice):
``--crop`` px tiles with >= 50 % tissue, judged by PSNR, SSIM, HaarPSI, ST-LPIPS
(:class:`aeutils.metrics.judges.Judges`), beside **bicubic**: the same pipeline with an untrained generator
(its output conv starts at zero: bicubic exactly), so both went through the same reads and JPEG tiles.

    python bench/sr_apply.py                 # the shipped generator (minutes on 2 shared cores)
    python bench/sr_apply.py --generator G.pt --slide 1
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

#: target: aeutils vs the naive loop
TARGET = 5.0
#: LR side of the naive loop's tiles
NAIVE_TILE = 64


def naive_loop(generator: Any, slide_path: Path, out_png: Path, mpp: float = 2.0, assume_mpp: float = 0.5,
               resample_filter: str | None = None) -> float:
    """The naive arm (module docstring); wall seconds. Reads the pixels ``sr apply`` reads (same filter)."""
    from PIL import Image

    from aeutils.scale import resolve_scale
    from aeutils.slidemap import SlideSource
    from aeutils.slides import open_slide
    from aeutils.sr.degrade import SLIDE_FILTER

    t0 = time.perf_counter()
    with open_slide(slide_path) as s:
        src = SlideSource(s, resolve_scale(s, mpp=mpp, assume_mpp=assume_mpp, filter=resample_filter or SLIDE_FILTER))
        out = np.full((4 * src.height, 4 * src.width, 3), 255, np.uint8)
        with torch.inference_mode():
            for y in range(0, src.height, NAIVE_TILE):
                for x in range(0, src.width, NAIVE_TILE):
                    w, h = min(NAIVE_TILE, src.width - x), min(NAIVE_TILE, src.height - y)
                    lr = torch.from_numpy(np.array(src.read(x, y, w, h))).permute(2, 0, 1)[None].float() / 255
                    sr = generator(lr)[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
                    out[4 * y:4 * (y + h), 4 * x:4 * (x + w)] = sr
    Image.fromarray(out).save(out_png)
    return time.perf_counter() - t0


def level0_only(slide_path: Path, out: Path, assume_mpp: float = 0.5) -> Path:
    """A copy of the slide's level 0 alone (tiled, zlib: its pixels exactly; ``assume_mpp`` tagged), so that
    reading it at 2 um/px downsamples level 0 with ``sr apply``'s filter instead of taking a coarser pyramid
    level as it is (the prostate's 2 um/px level was made by the file's writer, not by the generator's
    training degradation)."""
    import tifffile

    from aeutils.slides import open_slide

    with open_slide(slide_path) as s:
        rgb = np.ascontiguousarray(s.read_region(0, 0, 0, s.dimensions))
    px_per_cm = 1e4 / assume_mpp
    out.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(out) as tw:
        tw.write(rgb, tile=(256, 256), photometric="rgb", compression="zlib", metadata=None,
                 resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")
    return out


def test_crops(slide_path: Path, crop: int, assume_mpp: float = 0.5) -> list[tuple[int, int]]:
    """Level-0 (x, y) of ``crop`` px tissue tiles (>= 50 %) in the slide's test region, multiples of 4."""
    from aeutils.data import region_split
    from aeutils.patches import plan_grid
    from aeutils.slides import open_slide

    with open_slide(slide_path) as s:
        height = s.dimensions[1]
        cells = plan_grid(s, patch_size=crop, level=0, stride=crop, min_tissue=0.5)
    return [(c.x - c.x % 4, c.y - c.y % 4) for c in cells if region_split(c.y, crop, height) == "test"]


def judge(tiff: Path, slide_path: Path, crops: list[tuple[int, int]], crop: int, judges: Any) -> dict[str, float]:
    """Mean judges of the TIFF's crops against the slide's level-0 pixels at the same places."""
    from aeutils.slides import open_slide

    sr, hr = [], []
    with open_slide(tiff) as t, open_slide(slide_path) as s:
        for x, y in crops:
            sr.append(torch.from_numpy(np.array(t.read_region(x, y, 0, crop))).permute(2, 0, 1).float() / 255)
            hr.append(torch.from_numpy(np.array(s.read_region(x, y, 0, crop))).permute(2, 0, 1).float() / 255)
    per = judges(torch.stack(sr), torch.stack(hr))
    return {k: float(np.mean(v)) for k, v in per.items()}


def run(slide: int = 0, generator: str | None = None, crop: int = 128, out: Path | None = None,
        naive: bool = True, verbose: bool = True, speed_slide: Path | None = None,
        precision: str | None = None, resample_filter: str | None = None) -> dict[str, Any]:
    """The bench; returns ``{"cpu", "slide", "lr_size", "aeutils_s", "naive_s", "ratio", "mpx_per_s",
    "n_crops", "sr": {judge: mean}, "bicubic": {judge: mean}, "speed"}`` (``naive_s``/``ratio`` None
    without ``naive``). ``generator``: a checkpoint path, ``"tiny"`` (an untrained tiny generator: bicubic),
    or None (the shipped one). ``speed_slide``: the slide timed (default the sparse bench slide); ``precision``:
    ``sr apply --precision`` (None: auto, measured once the slide's tiles make the probe pay);
    ``resample_filter``: ``sr apply --resample-filter`` for every read (None: its default)."""
    from aeutils.metrics.judges import Judges
    from aeutils.sample import sample_slides
    from aeutils.speed import cpu_description
    from aeutils.sr.apply import generator_for, sr_slide
    from aeutils.sr.arch import PRESETS, Generator

    say = print if verbose else (lambda *a, **k: None)
    path = sample_slides()[slide]
    work = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="sr_apply_bench_"))
    g = Generator(PRESETS["tiny"][0]).eval() if generator == "tiny" else generator_for(generator, "cpu")
    cpu = cpu_description()
    say(f"CPU: {cpu.get('model', cpu)}; torch threads {torch.get_num_threads()}")
    if speed_slide is None:
        sys.path.insert(0, str(HERE))
        from encode_slide import CANVAS, OUT as BENCH_OUT, PIECES, build_sparse_slide

        speed_slide = build_sparse_slide(BENCH_OUT / f"bench_sparse_{CANVAS[0]}x{CANVAS[1]}_{PIECES}.tiff")
    speed_slide = Path(speed_slide)
    t0 = time.perf_counter()
    r = sr_slide(speed_slide, work / "speed", model=g, mpp=2.0, assume_mpp=0.5, progress=False, log=lambda t: None,
                 precision=precision, resample_filter=resample_filter)
    ours = time.perf_counter() - t0
    result: dict[str, Any] = {"cpu": cpu, "slide": path.name, "speed_slide": speed_slide.name,
                              "lr_size": (r.size[0] // 4, r.size[1] // 4), "aeutils_s": ours, "mpx_per_s": r.mpx_per_s,
                              "speed": r.speed, "naive_s": None, "ratio": None}
    say(f"{speed_slide.name} at 2 um/px ({r.size[0] // 4} x {r.size[1] // 4} LR px, {r.tiles} tissue tiles): "
        f"sr apply {ours:.1f} s ({r.speed})")
    if naive:
        t = naive_loop(g, speed_slide, work / "naive.png", resample_filter=resample_filter)
        result.update(naive_s=t, ratio=t / ours)
        say(f"naive loop (64 px tiles, one-shot, fp32, PIL PNG): {t:.1f} s -> sr apply is {t / ours:.2f}x faster "
            f"(target >= {TARGET:g}x)")
    lr_src = level0_only(path, work / "level0" / path.with_suffix(".tiff").name)
    r = sr_slide(lr_src, work / "sr", model=g, mpp=2.0, assume_mpp=0.5, progress=False, log=lambda t: None,
                 resample_filter=resample_filter)
    bic = sr_slide(lr_src, work / "bicubic", model=Generator(PRESETS["tiny"][0]).eval(), mpp=2.0, assume_mpp=0.5,
                   progress=False, log=lambda t: None, resample_filter=resample_filter)
    crops = test_crops(path, crop)
    judges = Judges()
    result["n_crops"] = len(crops)
    result["sr"] = judge(r.path, path, crops, crop, judges)
    result["bicubic"] = judge(bic.path, path, crops, crop, judges)
    from aeutils.sr.degrade import SLIDE_FILTER

    say(f"quality on {len(crops)} test-region crops of {crop} px vs the true 0.5 um/px pixels "
        f"(level 0 of {path.name} downsampled x4 with the {resample_filter or SLIDE_FILTER} filter):")
    say(f"{'':10}{'PSNR dB':>9}{'SSIM':>8}{'HaarPSI':>9}{'ST-LPIPS':>10}")
    for name in ("bicubic", "sr"):
        q = result[name]
        say(f"{name:10}{q['psnr']:9.2f}{q['ssim']:8.4f}{q['haarpsi']:9.4f}{q['stlpips']:10.4f}")
    if out is None:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slide", type=int, default=0, help="bundled slide index (0 CMU skin, 1 prostate)")
    p.add_argument("--generator", default=None, help="generator checkpoint (default: the shipped one; 'tiny': bicubic)")
    p.add_argument("--crop", type=int, default=128, help="test crop side, HR px")
    p.add_argument("--out", type=Path, default=None, help="keep the outputs here")
    p.add_argument("--speed-slide", type=Path, default=None, help="slide timed (default: the sparse bench slide)")
    p.add_argument("--precision", default=None, help="sr apply --precision for the timed run (default: auto)")
    p.add_argument("--resample-filter", default=None, help="sr apply --resample-filter for every read (default: its own)")
    p.add_argument("--no-naive", dest="naive", action="store_false")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    run(a.slide, a.generator, a.crop, a.out, a.naive, speed_slide=a.speed_slide, precision=a.precision,
        resample_filter=a.resample_filter)
    print(f"bench wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
