"""Whole-slide encoding speed: ``aeutils.slidemap.encode_slide`` vs a naive loop, same slide, same run.

The slide: ``bench/extract.py``'s :func:`build_slide` (the bundled sample slide's level-0 pixels tiled
``--reps`` times into a JPEG-tiled pyramid, levels 1/4/16; default 2 x 2 copies = 4440 x 5934 px),
cached under ``--out`` (default ``bench/out/``). Arms:

* naive: the loop a user writes without the library: for every 184 px step of the slide (a 181 px
  patch encodes to 46 x 46 latent pixels = 184 input px), one ``OpenSlide.read_region`` of 181 px,
  ``model.encode`` of that one patch (fp32, batch 1, inference mode), paste the 46 x 46 block into the
  map. Seams at every patch border (each patch is zero-padded on its own); no tissue mask, no file.
* naive on tissue: the same loop over only the patches whose cell touches tissue (given the mask for free).
* aeutils: ``encode_slide(...)`` end to end (tissue mask, strip reads, seamless overlapping tiles,
  batches, the measured speed choice of ``aeutils.speed``, work files, pyramidal TIFF written).

Throughput is the slide's area (input Mpx, the same numerator for every arm) per second of wall time,
so the ratios are time ratios. :func:`run_bench` returns a :class:`BenchResult`; ``main`` prints it.

    python bench/encode_slide.py            # 2 x 2 tiling, 2 interleaved repeats (a few minutes on 2 shared cores)
    python bench/encode_slide.py --smoke    # the sample slide alone (1 x 1): seconds (tests)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
#: target: aeutils vs the naive loop over the whole slide
TARGET = 5.0


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

    @property
    def cpu_ratio(self) -> float:
        """CPU seconds of the naive loop / of aeutils (less sensitive to other load than wall time)."""
        return self.naive_cpu_s / self.ours_cpu_s if self.ours_cpu_s > 0 else float("nan")

    def report(self) -> str:
        """The lines ``main`` prints."""
        mpx = self.width * self.height / 1e6
        c = self.cpu
        flags = f"AVX512_BF16 {'yes' if c.get('avx512_bf16') else 'no'}, AMX {'yes' if c.get('amx_bf16') else 'no'}"
        return "\n".join([
            f"slide: {self.slide} ({self.width} x {self.height} px = {mpx:.1f} Mpx), {self.tissue_tiles} tissue tiles",
            f"CPU: {c.get('model')} ({flags}), {self.threads} torch threads, load average {self.load_average:.1f}",
            f"(means of {self.repeats} interleaved repeats; Mpx/s = slide area / wall time)",
            f"naive loop, every 181 px patch ({self.naive_patches}): {self.naive_mpx_s:7.2f} Mpx/s "
            f"({self.naive_s:.1f} s wall, {self.naive_cpu_s:.1f} s CPU)",
            f"naive loop, tissue patches only ({self.naive_tissue_patches}): {self.naive_tissue_mpx_s:7.2f} Mpx/s "
            f"({self.naive_tissue_s:.1f} s wall, {self.naive_tissue_cpu_s:.1f} s CPU)",
            f"aeutils encode, end to end, TIFF written: {self.ours_mpx_s:7.2f} Mpx/s "
            f"({self.ours_s:.1f} s wall, {self.ours_cpu_s:.1f} s CPU; {self.speed_choice})",
            f"speed-up: {self.ratio:.2f}x over the naive loop (target {TARGET:g}x: {'met' if self.ratio >= TARGET else 'NOT met'}), "
            f"CPU time {self.cpu_ratio:.2f}x; {self.ratio_tissue:.2f}x over the naive loop given the tissue mask",
        ])


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


def run_bench(slide: Path, out: Path, *, core: int = 512, precision: str | None = None,
              repeats: int = 2) -> BenchResult:
    """Time the three arms on ``slide`` (level 0), interleaved ``repeats`` times (A B C, C B A, ...)
    so that load from other processes hits each arm alike; the encode arm writes under ``out``.
    Seconds are means over the repeats (wall and CPU)."""
    import torch

    from aeutils import load_pretrained
    from aeutils.slidemap import encode_slide
    from aeutils.slides import open_slide
    from aeutils.speed import cpu_description
    from aeutils.tissue import detect_tissue

    model = load_pretrained()
    with open_slide(slide) as s:
        w, h = s.dimensions
        _, tissue = detect_tissue(s, 2048)
    step = 184
    cells = [(x, y) for y in range(0, h, step) for x in range(0, w, step)]
    xs, ys = np.array([c[0] for c in cells]), np.array([c[1] for c in cells])
    on = tissue.fractions(xs, ys, step, step) > 0
    tissue_cells = [c for c, keep in zip(cells, on) if keep]
    shape = (-(-h // 4), -(-w // 4))
    info: dict[str, Any] = {}

    def ours() -> None:
        shutil.rmtree(out, ignore_errors=True)
        res = encode_slide(slide, out, model=model, core=core, precision=precision, progress=False, log=lambda _: None)
        info["tiles"], info["speed"] = res.tiles, res.speed

    arms = {"ours": ours, "naive": lambda: naive_encode(slide, model, cells, shape),
            "naive_tissue": lambda: naive_encode(slide, model, tissue_cells, shape)}
    wall = dict.fromkeys(arms, 0.0)
    cpu = dict.fromkeys(arms, 0.0)
    order = list(arms)
    for i in range(max(1, repeats)):
        for name in (order if i % 2 == 0 else order[::-1]):
            c0, t0 = cpu_seconds(), time.perf_counter()
            arms[name]()
            wall[name] += (time.perf_counter() - t0) / max(1, repeats)
            cpu[name] += (cpu_seconds() - c0) / max(1, repeats)
    mpx = w * h / 1e6
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return BenchResult(
        slide=str(slide), width=w, height=h, naive_s=wall["naive"], naive_tissue_s=wall["naive_tissue"],
        ours_s=wall["ours"], naive_mpx_s=mpx / wall["naive"], naive_tissue_mpx_s=mpx / wall["naive_tissue"],
        ours_mpx_s=mpx / wall["ours"], ratio=wall["naive"] / wall["ours"],
        ratio_tissue=wall["naive_tissue"] / wall["ours"], naive_patches=len(cells),
        naive_tissue_patches=len(tissue_cells), tissue_tiles=info["tiles"], speed_choice=info["speed"],
        cpu=cpu_description(), threads=torch.get_num_threads(), load_average=load,
        naive_cpu_s=cpu["naive"], naive_tissue_cpu_s=cpu["naive_tissue"], ours_cpu_s=cpu["ours"],
        repeats=max(1, repeats),
    )


def main(argv: list[str] | None = None) -> BenchResult:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a 1024 px region of the sample slide (seconds)")
    p.add_argument("--reps", type=int, nargs=2, default=(2, 2), metavar=("X", "Y"), help="sample tilings (2 2)")
    p.add_argument("--slide", type=Path, default=None, help="use this slide instead of building one")
    p.add_argument("--precision", default=None, help="force a speed candidate (default: measured)")
    p.add_argument("--out", type=Path, default=OUT, help="folder for the cached slide and the map (bench/out)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs of each arm, averaged (2; smoke 1)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    reps = (1, 1) if args.smoke else tuple(args.reps)
    if args.slide is not None:
        slide = args.slide
    else:
        sys.path.insert(0, str(HERE))
        from extract import build_slide

        slide = build_slide(args.out / f"bench_sample_{reps[0]}x{reps[1]}.tiff", *reps)
    result = run_bench(slide, args.out / ("encode_smoke" if args.smoke else "encode_run"), precision=args.precision,
                       repeats=1 if args.smoke else args.repeats)
    print(result.report())
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
