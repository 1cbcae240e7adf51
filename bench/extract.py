"""Patch extraction speed: ``aeutils.patches.extract`` vs a naive loop, same slide, same grid, same run.

The slide: a large multi-level pyramidal TIFF (JPEG tiles, 256 px, levels 1/4/16) made by tiling the
bundled sample slide's level-0 pixels (default 6 x 4 copies = 13320 x 11868 px), cached under
``--out`` (default ``bench/out/``, which also holds both arms' outputs; or ``--slide`` an existing one).
Both arms write 181 px level-0 PNGs of every tissue cell of the same grid:

* naive: one ``OpenSlide.read_region`` + ``Image.convert("RGB").save(png)`` (PIL defaults) per patch,
  one process, given the grid for free (its planning is not timed);
* aeutils: ``extract(...)`` end to end (tissue mask, grid, QC figure, block reads, process pool of
  ``--workers``, default every core, atomic PNG writes, manifest).

Then it checks the two outputs hold the same patches with identical pixels (all of them, or
``--check`` random ones) and prints patches/s of each and the ratio, and the CPU time per patch of
each (process + pool children: the part of the gain that does not depend on free cores; on a busy
machine the wall-clock ratio shrinks towards it).

    python bench/extract.py                 # the full run, 2 interleaved repeats (a minute or two on 2 cores)
    python bench/extract.py --smoke         # a 2x1 tiling at stride 362: seconds (CI)
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"  # default --out: the cached slide and the two arms' outputs


def build_slide(path: Path, reps_x: int, reps_y: int, *, tile: int = 256, quality: int = 80) -> Path:
    """Tile the sample slide's level-0 pixels ``reps_x`` x ``reps_y`` times into a JPEG-tiled pyramid (cached)."""
    if path.is_file():
        return path
    import tifffile

    from aeutils import sample_slide
    from aeutils.slides import open_slide

    with open_slide(sample_slide()) as s:
        src = s.read_region(0, 0, 0, s.dimensions)  # H x W x 3
    sh, sw = src.shape[:2]
    W, H = sw * reps_x, sh * reps_y

    def tiles(img: np.ndarray, width: int, height: int, ds: int):
        """Tiles (row-major) of the ``reps`` tiling of ``img`` (already downsampled by ``ds``)."""
        ih, iw = img.shape[:2]
        lw, lh = width // ds, height // ds
        for ty in range(0, lh, tile):
            for tx in range(0, lw, tile):
                yy = (np.arange(ty, ty + tile) % ih)[:, None]
                xx = (np.arange(tx, tx + tile) % iw)[None, :]
                t = img[yy, xx]
                t[max(0, lh - ty):, :] = 0
                t[:, max(0, lw - tx):] = 0
                yield t

    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    px_per_cm = 1e4 / 0.499
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for k, ds in enumerate((1, 4, 16)):
            img = src if ds == 1 else np.asarray(Image.fromarray(src).reduce(ds))
            tw.write(
                tiles(img, W, H, ds), shape=(H // ds, W // ds, 3), dtype=np.uint8, tile=(tile, tile),
                photometric="rgb", compression="jpeg", compressionargs={"level": quality},
                subfiletype=0 if k == 0 else 1, resolution=(px_per_cm / ds, px_per_cm / ds),
                resolutionunit="CENTIMETER", metadata=None,
            )
    os.replace(tmp, path)
    return path


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its reaped children (the extract pool), in seconds."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def naive(slide: Path, cells: list, out: Path, name: str) -> float:
    """One read_region + PIL PNG save per patch; returns seconds."""
    import openslide

    t0 = time.perf_counter()
    osr = openslide.OpenSlide(str(slide))
    for c in cells:
        target = out / c.relpath(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        osr.read_region((c.x, c.y), c.level, (c.size, c.size)).convert("RGB").save(target)
    osr.close()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny slide and sparse grid (seconds)")
    p.add_argument("--slide", type=Path, default=None, help="use this slide instead of building one")
    p.add_argument("--reps", type=int, nargs=2, default=(6, 4), metavar=("X", "Y"), help="sample tilings (6 4)")
    p.add_argument("--patch-size", type=int, default=181)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="extract's processes (default: every core)")
    p.add_argument("--check", type=int, default=None, help="compare this many random patches (default all)")
    p.add_argument("--out", type=Path, default=OUT, help="folder for the cached slide and the outputs (bench/out)")
    p.add_argument("--keep-output", action="store_true", help="keep the PNGs under --out")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs of each arm, averaged (2)")
    args = p.parse_args(argv)

    from aeutils.patches import default_workers, extract, plan_slide, read_manifest

    reps = (2, 1) if args.smoke else tuple(args.reps)
    if args.smoke:
        args.repeats = 1
    stride = args.stride if args.stride is not None else (2 * args.patch_size if args.smoke else None)
    slide = args.slide or build_slide(args.out / f"bench_sample_{reps[0]}x{reps[1]}.tiff", *reps)
    workers = args.workers or default_workers()
    plan = plan_slide(slide, args.patch_size, 0, stride)
    cells = plan.cells
    w, h = plan.tissue.mask.shape[1] / plan.tissue.scale[0], plan.tissue.mask.shape[0] / plan.tissue.scale[1]
    print(f"slide: {slide} ({w:.0f} x {h:.0f} px, {plan.path.stat().st_size / 2**20:.0f} MiB), "
          f"{len(cells)} tissue patches of {args.patch_size} px, stride {plan.stride}")
    run_dir = args.out / ("smoke" if args.smoke else "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    a_dir, n_dir = run_dir / "aeutils", run_dir / "naive"

    def run_ours() -> tuple[float, float]:
        shutil.rmtree(a_dir, ignore_errors=True)
        c0, t0 = cpu_seconds(), time.perf_counter()
        extract(slide, a_dir, patch_size=args.patch_size, stride=stride, workers=workers, progress=False)
        return time.perf_counter() - t0, cpu_seconds() - c0

    def run_naive() -> tuple[float, float]:
        shutil.rmtree(n_dir, ignore_errors=True)
        c0, t0 = cpu_seconds(), time.perf_counter()
        naive(slide, cells, n_dir, plan.name)
        return time.perf_counter() - t0, cpu_seconds() - c0

    # Interleaved (ours, naive, naive, ours, ...) so that load from other processes hits both alike;
    # the figures below are sums over the repeats (each arm starts from an empty folder every time).
    t_ours = c_ours = t_naive = c_naive = 0.0
    for i in range(args.repeats):
        for arm in ((run_ours, run_naive) if i % 2 == 0 else (run_naive, run_ours)):
            t, c = arm()
            if arm is run_ours:
                t_ours, c_ours = t_ours + t, c_ours + c
            else:
                t_naive, c_naive = t_naive + t, c_naive + c
            if args.repeats > 1:
                print(f"  repeat {i + 1}: {'aeutils' if arm is run_ours else 'naive  '} {t:7.2f} s wall, {c:7.2f} s CPU")
    t_ours, c_ours, t_naive, c_naive = (v / args.repeats for v in (t_ours, c_ours, t_naive, c_naive))

    rows = read_manifest(a_dir)
    ours = sorted(r["path"] for r in rows)
    theirs = sorted(q.relative_to(n_dir).as_posix() for q in n_dir.rglob("*.png"))
    if ours != theirs:
        print(f"MISMATCH: aeutils wrote {len(ours)} patches, naive {len(theirs)}", file=sys.stderr)
        return 1
    from PIL import Image

    picks = ours if args.check is None else random.Random(0).sample(ours, min(args.check, len(ours)))
    for rel in picks:
        if not np.array_equal(np.asarray(Image.open(a_dir / rel)), np.asarray(Image.open(n_dir / rel).convert("RGB"))):
            print(f"MISMATCH: pixels of {rel} differ", file=sys.stderr)
            return 1
    size_a = sum((a_dir / r).stat().st_size for r in ours) / 2**20
    size_n = sum((n_dir / r).stat().st_size for r in ours) / 2**20
    n = len(ours)
    print(f"same patches: {n} files, {len(picks)} compared pixel for pixel, all identical")
    print(f"naive loop (read_region + PIL PNG save, 1 process): {n / t_naive:8.1f} patches/s  "
          f"({t_naive:.2f} s wall, {1e3 * c_naive / n:.1f} ms CPU/patch, {size_n:.1f} MiB)")
    print(f"aeutils extract ({workers} workers, end to end):       {n / t_ours:8.1f} patches/s  "
          f"({t_ours:.2f} s wall, {1e3 * c_ours / n:.1f} ms CPU/patch, {size_a:.1f} MiB)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"speed-up: {t_naive / t_ours:.2f}x wall on {default_workers()} cores (load average {load:.1f}); "
          f"CPU per patch: naive / aeutils = {c_naive / c_ours:.2f}x")
    if not args.keep_output:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())
