"""Whole-slide encoding speed: ``aeutils.slidemap.encode_slide`` vs a naive loop, same slide, same run.

The slide (cached under ``--out``, default ``bench/out/``) looks like a real whole-slide image: mostly
glass with a few tissue sections. :func:`build_sparse_slide` places ``--pieces`` copies (default 3) of
the bundled sample slide's pixels (as ``bench/extract.py``'s :func:`build_slide` tiles them, 1 x 1) on
a ``--canvas`` of glass (default 8704 x 7168 px = 62 Mpx at 0.499 um/px), JPEG-tiled 256 px, levels 1/4/16.
About a third of its area is the sample (itself part glass); the printed tissue fraction is what the
tissue mask found. Real scans are often sparser (CAMELYON16 lymph nodes ~10-20 % tissue) or
denser (a TCGA resection can fill half the glass); the naive-on-tissue ratio printed beside the
whole-grid one is the part of the gain that does not come from skipping glass.
``--reps X Y`` uses extract's dense tiling instead (almost all tissue), ``--slide`` any file. Arms:

* naive: the loop a user writes without the library: for every 184 px step of the slide (a 181 px
  patch encodes to 46 x 46 latent pixels = 184 input px), one ``OpenSlide.read_region`` of 181 px,
  ``model.encode`` of that one patch (fp32, batch 1, inference mode, torch's default threads), paste
  the 46 x 46 block into the map. Seams at every patch border (each patch is zero-padded on its own);
  no tissue mask, no file.
* naive on tissue: the same loop over only the patches whose cell touches tissue (given the mask for free).
* aeutils: ``encode_slide(...)`` end to end as the CLI runs it (tissue mask, strip reads decoded from
  the TIFF tiles where verified identical to OpenSlide, seamless overlapping tiles, the measured speed
  choice of ``aeutils.speed``, work files, pyramidal TIFF written). The speed choice is cached per
  process and its probe runs once the process's tiles make it pay (:func:`aeutils.speed.inference_choice`),
  so a later repeat may run under another choice than the first: each repeat's choice is printed.

Throughput is the slide's area (input Mpx, the same numerator for every arm) per second of wall time,
so the ratios are time ratios; CPU seconds (user + system) are printed beside them (other load slows
wall time more than CPU time). :func:`run_bench` returns a :class:`BenchResult`; ``main`` prints it.

    python bench/encode_slide.py            # sparse 62 Mpx slide, 2 interleaved repeats (minutes on 2 idle cores)
    python bench/encode_slide.py --smoke    # a small sparse slide: seconds (tests)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
#: target: aeutils vs the naive loop over the whole slide
TARGET = 5.0
#: the default bench slide: glass canvas (W, H) in level-0 px and copies of the sample on it
CANVAS, PIECES = (8704, 7168), 3
#: level downsamples of the bench slides (as bench/extract.py's build_slide)
LEVELS = (1, 4, 16)


@dataclass
class BenchResult:
    """Seconds and input Mpx/s of each arm on one slide (``width`` x ``height`` px, ``tissue_tiles``
    tiles with tissue), the ratios, and the machine."""

    slide: str
    width: int
    height: int
    naive_s: float
    naive_tissue_s: float
    ours_s: float
    naive_mpx_s: float
    naive_tissue_mpx_s: float
    ours_mpx_s: float
    ratio: float
    ratio_tissue: float
    naive_patches: int
    naive_tissue_patches: int
    tissue_tiles: int
    speed_choice: str
    cpu: dict[str, Any]
    threads: int
    load_average: float
    naive_cpu_s: float = 0.0
    naive_tissue_cpu_s: float = 0.0
    ours_cpu_s: float = 0.0
    repeats: int = 1
    #: share of the slide's area the tissue mask covers, and the share aeutils encoded (tissue tiles' cores)
    tissue_fraction: float = 0.0
    encoded_fraction: float = 0.0
    #: how aeutils read the pixels (SlideSource.reader)
    reader: str = ""
    #: per repeat of the aeutils arm: wall seconds and the speed choice it ran under
    ours_runs: list[float] = field(default_factory=list)
    speed_choices: list[str] = field(default_factory=list)
    #: 1-minute load average before the first arm and after the last
    load_before: float = float("nan")

    @property
    def cpu_ratio(self) -> float:
        """CPU seconds of the naive loop / of aeutils (less sensitive to other load than wall time)."""
        return self.naive_cpu_s / self.ours_cpu_s if self.ours_cpu_s > 0 else float("nan")

    @property
    def cpu_ratio_tissue(self) -> float:
        """CPU seconds of the naive loop on tissue / of aeutils."""
        return self.naive_tissue_cpu_s / self.ours_cpu_s if self.ours_cpu_s > 0 else float("nan")

    def report(self) -> str:
        """The lines ``main`` prints."""
        mpx = self.width * self.height / 1e6
        c = self.cpu
        flags = f"AVX512_BF16 {'yes' if c.get('avx512_bf16') else 'no'}, AMX {'yes' if c.get('amx_bf16') else 'no'}"
        runs = "; ".join(f"{t:.1f} s under {ch}" for t, ch in zip(self.ours_runs, self.speed_choices))
        return "\n".join([
            f"slide: {self.slide} ({self.width} x {self.height} px = {mpx:.1f} Mpx), tissue mask "
            f"{100 * self.tissue_fraction:.0f} % of the area; {self.tissue_tiles} tissue tiles = "
            f"{100 * self.encoded_fraction:.0f} % of the area encoded by aeutils",
            f"CPU: {c.get('model')} ({flags}), {self.threads} torch threads, load average "
            f"{self.load_before:.1f} before, {self.load_average:.1f} after",
            f"(means of {self.repeats} interleaved repeats; Mpx/s = slide area / wall time)",
            f"naive loop, every 181 px patch ({self.naive_patches}): {self.naive_mpx_s:7.2f} Mpx/s "
            f"({self.naive_s:.1f} s wall, {self.naive_cpu_s:.1f} s CPU)",
            f"naive loop, tissue patches only ({self.naive_tissue_patches}): {self.naive_tissue_mpx_s:7.2f} Mpx/s "
            f"({self.naive_tissue_s:.1f} s wall, {self.naive_tissue_cpu_s:.1f} s CPU)",
            f"aeutils encode, end to end, TIFF written: {self.ours_mpx_s:7.2f} Mpx/s "
            f"({self.ours_s:.1f} s wall, {self.ours_cpu_s:.1f} s CPU; reads: {self.reader})",
            f"aeutils repeats: {runs}",
            f"speed-up over the naive loop: {self.ratio:.2f}x wall, {self.cpu_ratio:.2f}x CPU "
            f"(target {TARGET:g}x: {'met' if self.ratio >= TARGET else 'NOT met'}); over the naive loop given the "
            f"tissue mask: {self.ratio_tissue:.2f}x wall, {self.cpu_ratio_tissue:.2f}x CPU",
        ])


def _glass(rgb: np.ndarray) -> tuple[int, int, int]:
    """The sample's glass colour: the median of its bright, unsaturated pixels (near-white if none)."""
    flat = rgb.reshape(-1, 3)[:: 7].astype(np.int16)
    bright = flat[(flat.min(1) > 200) & (flat.max(1) - flat.min(1) < 16)]
    return tuple(int(v) for v in np.median(bright, axis=0)) if len(bright) > 100 else (238, 236, 240)


def piece_positions(canvas: tuple[int, int], pieces: int, piece: tuple[int, int]) -> list[tuple[int, int]]:
    """Level-0 top-left (x, y) of each piece (w x h px) on the canvas: evenly across, alternately high
    and low (like sections laid on a glass slide), on multiples of 16 px so every level holds them exactly."""
    W, H = canvas
    pw, ph = piece
    if pieces < 1 or pw > W or ph > H:
        raise ValueError(f"{pieces} pieces of {pw} x {ph} px do not fit a {W} x {H} px canvas")
    out = []
    for k in range(pieces):
        cx, cy = (k + 0.5) * W / pieces, H * (0.33 if k % 2 == 0 else 0.67)
        x = int(min(max(0, cx - pw / 2), W - pw)) // 16 * 16
        y = int(min(max(0, cy - ph / 2), H - ph)) // 16 * 16
        out.append((x, y))
    return out


def build_sparse_slide(path: Path, canvas: tuple[int, int] = CANVAS, pieces: int = PIECES, *,
                       tile: int = 256, quality: int = 80) -> Path:
    """A slide of ``pieces`` copies of the sample slide (as :func:`build_slide` writes it, 1 x 1) on a
    ``canvas`` (W, H) of glass: the sample's own glass colour with +-3 grey-level noise. JPEG tiles of
    ``tile`` px, levels :data:`LEVELS`, 0.499 um/px. Cached (an existing ``path`` is returned as is)."""
    if path.is_file():
        return path
    import tifffile
    from PIL import Image

    sys.path.insert(0, str(HERE))
    from extract import SAMPLE_MPP, build_slide

    from aeutils.slides import open_slide

    dense = build_slide(path.parent / "bench_sample_1x1.tiff", 1, 1, tile=tile, quality=quality)
    with open_slide(dense) as s:
        src = s.read_region(0, 0, 0, s.dimensions)
    ph, pw = src.shape[:2] // np.array(16) * 16
    src = np.ascontiguousarray(src[:ph, :pw])
    at = piece_positions(canvas, pieces, (pw, ph))
    W, H = canvas
    noise = np.random.default_rng(0).integers(-3, 4, size=(tile, tile, 1), dtype=np.int16)
    glass_tile = np.clip(np.array(_glass(src), np.int16) + noise, 0, 255).astype(np.uint8)

    def tiles(img: np.ndarray, ds: int) -> Iterator[np.ndarray]:
        lw, lh = W // ds, H // ds
        ih, iw = img.shape[:2]
        for ty in range(0, lh, tile):
            for tx in range(0, lw, tile):
                t = glass_tile.copy()
                for x, y in at:
                    x, y = x // ds, y // ds
                    ax0, ay0, ax1, ay1 = max(tx, x), max(ty, y), min(tx + tile, x + iw), min(ty + tile, y + ih)
                    if ax1 > ax0 and ay1 > ay0:
                        t[ay0 - ty:ay1 - ty, ax0 - tx:ax1 - tx] = img[ay0 - y:ay1 - y, ax0 - x:ax1 - x]
                t[max(0, lh - ty):, :] = 0
                t[:, max(0, lw - tx):] = 0
                yield t

    tmp = path.with_suffix(".tmp")
    px_per_cm = 1e4 / SAMPLE_MPP
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for k, ds in enumerate(LEVELS):
            img = src if ds == 1 else np.asarray(Image.fromarray(src).reduce(ds))
            tw.write(
                tiles(img, ds), shape=(H // ds, W // ds, 3), dtype=np.uint8, tile=(tile, tile),
                photometric="rgb", compression="jpeg", compressionargs={"level": quality},
                subfiletype=0 if k == 0 else 1, resolution=(px_per_cm / ds, px_per_cm / ds),
                resolutionunit="CENTIMETER", metadata=None,
            )
    os.replace(tmp, path)
    return path


def naive_encode(slide: Path, model: Any, cells: list[tuple[int, int]], shape: tuple[int, int]) -> np.ndarray:
    """The naive loop: read each 181 px patch at level-0 ``(x, y)`` of ``cells``, encode it alone, paste its
    46 x 46 encoding at (y/4, x/4) of a ``shape`` map. Returns the map (float32)."""
    import openslide
    import torch

    zmap = np.zeros(shape, np.float32)
    osr = openslide.OpenSlide(str(slide))
    try:
        with torch.inference_mode():
            for x, y in cells:
                rgb = np.asarray(osr.read_region((x, y), 0, (181, 181)).convert("RGB"))
                t = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
                z = model.encode(t)[0, 0].numpy()
                ly, lx = y // 4, x // 4
                h, w = min(46, shape[0] - ly), min(46, shape[1] - lx)
                zmap[ly:ly + h, lx:lx + w] = z[:h, :w]
    finally:
        osr.close()
    return zmap


def cpu_seconds() -> float:
    """CPU time (user + system) of this process so far, in seconds."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def run_bench(slide: Path, out: Path, *, core: int | None = None, precision: str | None = None,
              repeats: int = 2) -> BenchResult:
    """Time the three arms on ``slide`` (level 0), interleaved ``repeats`` times (A B C, C B A, ...)
    so that load from other processes hits each arm alike; the encode arm writes under ``out``
    (``core``: encode's tile core, default encode's own).
    Seconds are means over the repeats (wall and CPU)."""
    import torch

    from aeutils import load_model
    from aeutils.slidemap import encode_slide
    from aeutils.slides import open_slide
    from aeutils.speed import cpu_description
    from aeutils.tissue import detect_tissue

    model = load_model()
    with open_slide(slide) as s:
        w, h = s.dimensions
        _, tissue = detect_tissue(s, 2048)
    step = 184
    cells = [(x, y) for y in range(0, h, step) for x in range(0, w, step)]
    xs, ys = np.array([c[0] for c in cells]), np.array([c[1] for c in cells])
    on = tissue.fractions(xs, ys, step, step) > 0
    tissue_cells = [c for c, keep in zip(cells, on) if keep]
    shape = (-(-h // 4), -(-w // 4))
    info: dict[str, Any] = {"runs": [], "speeds": []}

    def ours() -> None:
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        kw = {} if core is None else {"core": core}
        res = encode_slide(slide, out, model=model, precision=precision, progress=False, log=lambda _: None, **kw)
        info["runs"].append(time.perf_counter() - t0)
        info["speeds"].append(res.speed)
        info["tiles"], info["mpx"], info["reader"] = res.tiles, res.megapixels, res.reader

    arms = {"ours": ours, "naive": lambda: naive_encode(slide, model, cells, shape),
            "naive_tissue": lambda: naive_encode(slide, model, tissue_cells, shape)}
    wall = dict.fromkeys(arms, 0.0)
    cpu = dict.fromkeys(arms, 0.0)
    order = list(arms)
    load_before = _load()
    for i in range(max(1, repeats)):
        for name in (order if i % 2 == 0 else order[::-1]):
            c0, t0 = cpu_seconds(), time.perf_counter()
            arms[name]()
            wall[name] += (time.perf_counter() - t0) / max(1, repeats)
            cpu[name] += (cpu_seconds() - c0) / max(1, repeats)
    mpx = w * h / 1e6
    return BenchResult(
        slide=str(slide), width=w, height=h, naive_s=wall["naive"], naive_tissue_s=wall["naive_tissue"],
        ours_s=wall["ours"], naive_mpx_s=mpx / wall["naive"], naive_tissue_mpx_s=mpx / wall["naive_tissue"],
        ours_mpx_s=mpx / wall["ours"], ratio=wall["naive"] / wall["ours"],
        ratio_tissue=wall["naive_tissue"] / wall["ours"], naive_patches=len(cells),
        naive_tissue_patches=len(tissue_cells), tissue_tiles=info["tiles"], speed_choice=info["speeds"][-1],
        cpu=cpu_description(), threads=torch.get_num_threads(), load_average=_load(),
        naive_cpu_s=cpu["naive"], naive_tissue_cpu_s=cpu["naive_tissue"], ours_cpu_s=cpu["ours"],
        repeats=max(1, repeats), tissue_fraction=float(tissue.mask.mean()), encoded_fraction=info["mpx"] / mpx,
        reader=info["reader"], ours_runs=info["runs"], speed_choices=info["speeds"], load_before=load_before,
    )


def main(argv: list[str] | None = None) -> BenchResult:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a small sparse slide (1 piece on 2560 x 3072 px)")
    p.add_argument("--canvas", type=int, nargs=2, default=CANVAS, metavar=("W", "H"),
                   help=f"glass canvas of the sparse slide, level-0 px ({CANVAS[0]} {CANVAS[1]})")
    p.add_argument("--pieces", type=int, default=PIECES, help=f"copies of the sample on the canvas ({PIECES})")
    p.add_argument("--reps", type=int, nargs=2, default=None, metavar=("X", "Y"),
                   help="instead: bench/extract.py's dense X x Y tiling of the sample (almost all tissue)")
    p.add_argument("--slide", type=Path, default=None, help="use this slide instead of building one")
    p.add_argument("--precision", default=None, help="force a speed candidate (default: measured)")
    p.add_argument("--tile", type=int, default=None, help="encode's tile core in px (default: encode's, 768)")
    p.add_argument("--out", type=Path, default=OUT, help="folder for the cached slide and the map (bench/out)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs of each arm, averaged (2; smoke 1)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.slide is not None:
        slide = args.slide
    elif args.reps is not None:
        sys.path.insert(0, str(HERE))
        from extract import build_slide

        slide = build_slide(args.out / f"bench_sample_{args.reps[0]}x{args.reps[1]}.tiff", *args.reps)
    else:
        canvas, pieces = ((2560, 3072), 1) if args.smoke else (tuple(args.canvas), args.pieces)
        slide = build_sparse_slide(args.out / f"bench_sparse_{canvas[0]}x{canvas[1]}_{pieces}.tiff", canvas, pieces)
    result = run_bench(slide, args.out / ("encode_smoke" if args.smoke else "encode_run"), precision=args.precision,
                       repeats=1 if args.smoke else args.repeats, core=args.tile)
    print(result.report())
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
