"""Patch extraction speed: ``aeutils.patches.extract`` vs a naive loop, same slide, same grid, same run.

Two cases, each with both arms timed in the same run (interleaved repeats):

* **level 0**: a large multi-level pyramidal TIFF (JPEG tiles, 256 px, levels 1/4/16) made by tiling
  the bundled sample slide's level-0 pixels (default 6 x 4 copies = 13320 x 11868 px at 0.499 um/px);
  181 px level-0 patches. naive: one ``OpenSlide.read_region`` + ``Image.convert("RGB").save(png)``
  (PIL defaults) per patch; the outputs are compared pixel for pixel (they must be identical).
* **resampled** (``--mpp 0.5`` on a 40x pyramid): the same tiling (default 3 x 2 copies) upsampled 2x
  (Lanczos) into a pyramid at 0.2495 / 0.998 / 3.99 um/px (levels 4x apart, as TCGA 40x files), so no
  level is within 10 % of 0.5 um/px and extract reads level 0 and downsamples it x2.004. naive: per
  patch, ``read_region`` of the 2x-size region at level 0 + ``Image.resize(181)`` with extract's filter
  (area: ``Image.BOX``) onto the same output grid + PIL PNG save. The two arms' pixels are compared
  exactly too (a box filter sees only each output pixel's footprint, so the neighbours extract's strip
  has do not change a patch); if they ever differ, the min/mean PSNR is reported and 35 dB is the bar.
  The naive arm has OpenSlide paint every level-0 pixel (4 per output pixel, ~20-45 ns/px on the
  2-core EPYC used for the README); extract decodes them straight from the JPEG tiles
  (:mod:`aeutils.tiffread`, ~6 ns/px, used only where checked bit-identical to OpenSlide at open).

In both, naive is one process given the grid for free (its planning is not timed) and aeutils is
``extract(...)`` end to end (tissue mask, grid, QC figure, strip reads, process pool of ``--workers``,
default every core, atomic PNG writes, manifest). Printed: patches/s of each arm, the wall-clock ratio,
and the CPU time per patch of each (process + pool children: the part of the gain that does not depend
on free cores; on a busy machine the wall-clock ratio shrinks towards it). :func:`run` returns the
numbers as a dict.

    python bench/extract.py                 # both cases, 2 interleaved repeats (a few minutes on 2 cores)
    python bench/extract.py --smoke         # small slides, sparse grids: seconds (CI)

The slides are cached under ``--out`` (default ``bench/out/``, which also holds the arms' outputs).
:func:`build_slide` is also used by ``bench/encode_slide.py``.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"  # default --out: the cached slides and the arms' outputs
SAMPLE_MPP = 0.499


def build_slide(path: Path, reps_x: int, reps_y: int, *, tile: int = 256, quality: int = 80, upsample: int = 1) -> Path:
    """Tile the sample slide's level-0 pixels ``reps_x`` x ``reps_y`` times into a JPEG-tiled pyramid (cached).

    ``upsample`` > 1 first enlarges the sample that many times (Lanczos) and tags the file at
    ``0.499 / upsample`` um/px: ``upsample=2`` makes a 40x-like slide (0.2495 um/px).
    """
    if path.is_file():
        return path
    import tifffile
    from PIL import Image

    from aeutils import sample_slide
    from aeutils.slides import open_slide

    with open_slide(sample_slide()) as s:
        src = s.read_region(0, 0, 0, s.dimensions)  # H x W x 3
    if upsample > 1:
        src = np.asarray(Image.fromarray(src).resize((src.shape[1] * upsample, src.shape[0] * upsample),
                                                     Image.Resampling.LANCZOS))
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

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    px_per_cm = 1e4 / (SAMPLE_MPP / upsample)
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


def naive_resampled(slide: Path, cells: list, out: Path, name: str, factor: float, downsample: float,
                    filter: str = "area") -> float:
    """Per patch: read_region of the ``factor``-times larger level-0 region, PIL resize with extract's
    filter (area = ``Image.BOX``, or Lanczos) onto the same output-pixel grid as extract (``box`` at the
    patch's exact level-0 position), PIL PNG save."""
    import math

    import openslide
    from PIL import Image

    flt = Image.Resampling.BOX if filter == "area" else Image.Resampling.LANCZOS
    t0 = time.perf_counter()
    osr = openslide.OpenSlide(str(slide))
    for c in cells:
        target = out / c.relpath(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        ox, oy = round(c.x / downsample), round(c.y / downsample)
        x0, y0 = math.floor(ox * factor), math.floor(oy * factor)
        big = math.ceil(c.size * factor) + 1
        box = (ox * factor - x0, oy * factor - y0, ox * factor - x0 + c.size * factor, oy * factor - y0 + c.size * factor)
        osr.read_region((x0, y0), 0, (big, big)).convert("RGB").resize(
            (c.size, c.size), flt, box=box).save(target)
    osr.close()
    return time.perf_counter() - t0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _case(name: str, slide: Path, run_dir: Path, *, patch_size: int, stride: int | None, mpp: float | None,
          workers: int, repeats: int, check: int | None, keep: bool) -> dict[str, Any]:
    """Time both arms of one case; returns its numbers (and ``ok`` False with ``problem`` on a mismatch)."""
    from PIL import Image

    from aeutils.patches import extract, plan_slide, read_manifest

    import openslide

    from aeutils import tiffread

    plan = plan_slide(slide, patch_size, None if mpp else 0, stride, mpp=mpp)
    cells = plan.cells
    w, h = plan.dimensions
    with openslide.OpenSlide(str(slide)) as osr:
        reader = tiffread.describe(slide, plan.level, osr)
    tiffread.close_readers()
    print(f"[{name}] slide: {slide.name} ({w} x {h} px at level 0, {slide.stat().st_size / 2**20:.0f} MiB), "
          f"{len(cells)} tissue patches of {patch_size} px, stride {plan.stride}; {plan.scale.describe().split(': ', 1)[1]}")
    print(f"[{name}] aeutils reads level {plan.level} by {reader}; load average {os.getloadavg()[0]:.1f} before")
    shutil.rmtree(run_dir, ignore_errors=True)
    a_dir, n_dir = run_dir / "aeutils", run_dir / "naive"

    def run_ours() -> tuple[float, float]:
        shutil.rmtree(a_dir, ignore_errors=True)
        c0, t0 = cpu_seconds(), time.perf_counter()
        extract(slide, a_dir, patch_size=patch_size, stride=stride, mpp=mpp, workers=workers, progress=False,
                log=lambda m: None)
        return time.perf_counter() - t0, cpu_seconds() - c0

    def run_naive() -> tuple[float, float]:
        shutil.rmtree(n_dir, ignore_errors=True)
        c0, t0 = cpu_seconds(), time.perf_counter()
        if plan.factor == 1.0:
            naive(slide, cells, n_dir, plan.name)
        else:
            naive_resampled(slide, cells, n_dir, plan.name, plan.factor, plan.downsample, plan.scale.filter)
        return time.perf_counter() - t0, cpu_seconds() - c0

    # Interleaved (ours, naive, naive, ours, ...) so that load from other processes hits both alike.
    tot = {"ours": [0.0, 0.0], "naive": [0.0, 0.0]}
    best = {"ours": float("inf"), "naive": float("inf")}  # other load only ever slows a run down
    for i in range(repeats):
        arms: list[tuple[str, Callable[[], tuple[float, float]]]] = [("ours", run_ours), ("naive", run_naive)]
        for key, arm in (arms if i % 2 == 0 else arms[::-1]):
            t, c = arm()
            tot[key][0] += t
            tot[key][1] += c
            best[key] = min(best[key], t)
            if repeats > 1:
                print(f"  repeat {i + 1}: {'aeutils' if key == 'ours' else 'naive  '} {t:7.2f} s wall, {c:7.2f} s CPU")
    (t_ours, c_ours), (t_naive, c_naive) = ([v / repeats for v in tot[k]] for k in ("ours", "naive"))

    ours = sorted(r["path"] for r in read_manifest(a_dir))
    theirs = sorted(q.relative_to(n_dir).as_posix() for q in n_dir.rglob("*.png"))
    res: dict[str, Any] = {"case": name, "ok": True, "patches": len(ours), "level": plan.level,
                           "factor": plan.factor, "mpp": plan.mpp, "reader": reader,
                           "tile_decoding": reader.startswith("tile decoding")}
    if ours != theirs:
        res.update(ok=False, problem=f"aeutils wrote {len(ours)} patches, naive {len(theirs)}")
        return res
    picks = ours if check is None else random.Random(0).sample(ours, min(check, len(ours)))
    psnrs, maxdiff = [], 0
    for rel in picks:
        a = np.asarray(Image.open(a_dir / rel))
        b = np.asarray(Image.open(n_dir / rel).convert("RGB"))
        psnrs.append(_psnr(a, b))
        maxdiff = max(maxdiff, int(np.abs(a.astype(np.int16) - b).max()))
    n = len(ours)
    res.update(
        compared=len(picks), identical=all(p == float("inf") for p in psnrs), max_abs_diff=maxdiff,
        psnr_min=min(psnrs), psnr_mean=float(np.mean([min(p, 99.0) for p in psnrs])),
        naive_patches_per_s=n / t_naive, ours_patches_per_s=n / t_ours, speedup=t_naive / t_ours,
        naive_cpu_ms_per_patch=1e3 * c_naive / n, ours_cpu_ms_per_patch=1e3 * c_ours / n, cpu_ratio=c_naive / c_ours,
        naive_mib=sum((n_dir / r).stat().st_size for r in ours) / 2**20,
        ours_mib=sum((a_dir / r).stat().st_size for r in ours) / 2**20,
        naive_s=t_naive, ours_s=t_ours, repeats=repeats,
        naive_s_best=best["naive"], ours_s_best=best["ours"], speedup_best=best["naive"] / best["ours"],
    )
    if plan.factor == 1.0 and not res["identical"]:
        res.update(ok=False, problem="level-0 pixels differ between the arms")
    if plan.factor != 1.0 and res["psnr_min"] < 35:
        res.update(ok=False, problem=f"resampled patches disagree (min PSNR {res['psnr_min']:.1f} dB)")
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return res


def cpu_name() -> str:
    """lscpu's model name, and whether the CPU has AVX512_BF16 / AMX (for the record beside the figures)."""
    model, flags = "unknown CPU", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    bf16 = "avx512_bf16" in flags
    amx = "amx_tile" in flags
    return f"{model} (AVX512_BF16 {'yes' if bf16 else 'no'}, AMX {'yes' if amx else 'no'})"


def run(*, smoke: bool = False, out: Path = OUT, workers: int | None = None, repeats: int = 2,
        check: int | None = None, patch_size: int = 181, stride: int | None = None,
        reps: tuple[int, int] = (6, 4), reps_40x: tuple[int, int] = (3, 2), slide: Path | None = None,
        cases: tuple[str, ...] = ("level0", "resampled"), keep_output: bool = False) -> dict[str, Any]:
    """Both cases; returns ``{"cpu", "workers", "cores", "load", "level0": {...}, "resampled": {...}}``
    with patches/s, ``speedup`` (naive wall / aeutils wall), CPU ms per patch and pixel agreement."""
    from aeutils.patches import default_workers

    if smoke:
        reps, reps_40x, repeats = (2, 1), (1, 1), 1
        stride = stride if stride is not None else 2 * patch_size
    nworkers = workers or default_workers()
    result: dict[str, Any] = {"cpu": cpu_name(), "workers": nworkers, "cores": default_workers()}
    if "level0" in cases:
        s0 = slide or build_slide(out / f"bench_sample_{reps[0]}x{reps[1]}.tiff", *reps)
        result["level0"] = _case("level 0", s0, out / ("smoke" if smoke else "run") / "level0", patch_size=patch_size,
                                 stride=stride, mpp=None, workers=nworkers, repeats=repeats, check=check,
                                 keep=keep_output)
    if "resampled" in cases:
        s40 = build_slide(out / f"bench_sample40x_{reps_40x[0]}x{reps_40x[1]}.tiff", *reps_40x, upsample=2)
        result["resampled"] = _case("--mpp 0.5 on 40x", s40, out / ("smoke" if smoke else "run") / "resampled",
                                    patch_size=patch_size, stride=stride, mpp=0.5, workers=nworkers,
                                    repeats=repeats, check=check, keep=keep_output)
    result["load"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return result


def report(result: dict[str, Any]) -> None:
    """Print the figures of :func:`run`."""
    print(f"CPU: {result['cpu']}, {result['cores']} cores; load average {result['load']:.1f} after the run")
    for key, naive_what in (("level0", "read_region + PIL PNG save"),
                            ("resampled", "2x read_region + PIL resize + PNG save")):
        r = result.get(key)
        if r is None:
            continue
        if not r["ok"]:
            print(f"[{r['case']}] MISMATCH: {r['problem']}", file=sys.stderr)
            continue
        same = ("all identical" if r["identical"] else
                f"max abs diff {r['max_abs_diff']}, PSNR naive vs aeutils min {r['psnr_min']:.1f} dB, "
                f"mean {r['psnr_mean']:.1f} dB")
        print(f"[{r['case']}] same patches: {r['patches']} files, {r['compared']} compared pixel for pixel, {same}")
        print(f"[{r['case']}] aeutils reads level {r['level']} by {r['reader']}")
        print(f"[{r['case']}] naive loop ({naive_what}, 1 process): {r['naive_patches_per_s']:8.1f} patches/s  "
              f"({r['naive_s']:.2f} s wall, {r['naive_cpu_ms_per_patch']:.1f} ms CPU/patch, {r['naive_mib']:.1f} MiB)")
        print(f"[{r['case']}] aeutils extract ({result['workers']} workers, end to end): "
              f"{r['ours_patches_per_s']:8.1f} patches/s  ({r['ours_s']:.2f} s wall, "
              f"{r['ours_cpu_ms_per_patch']:.1f} ms CPU/patch, {r['ours_mib']:.1f} MiB)")
        print(f"[{r['case']}] speed-up: {r['speedup']:.2f}x wall on {result['cores']} cores "
              f"(mean of {r['repeats']}; best run of each arm: {r['speedup_best']:.2f}x); "
              f"CPU per patch: naive / aeutils = {r['cpu_ratio']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="small slides and sparse grids (seconds)")
    p.add_argument("--slide", type=Path, default=None, help="level-0 case: use this slide instead of building one")
    p.add_argument("--reps", type=int, nargs=2, default=(6, 4), metavar=("X", "Y"), help="level-0 case tilings (6 4)")
    p.add_argument("--reps-40x", type=int, nargs=2, default=(3, 2), metavar=("X", "Y"),
                   help="resampled case: tilings of the 2x upsampled sample (3 2)")
    p.add_argument("--case", choices=("level0", "resampled", "both"), default="both")
    p.add_argument("--patch-size", type=int, default=181)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="extract's processes (default: every core)")
    p.add_argument("--check", type=int, default=None, help="compare this many random patches (default all)")
    p.add_argument("--out", type=Path, default=OUT, help="folder for the cached slides and the outputs (bench/out)")
    p.add_argument("--keep-output", action="store_true", help="keep the PNGs under --out")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs of each arm, averaged (2)")
    args = p.parse_args(argv)
    cases = ("level0", "resampled") if args.case == "both" else (args.case,)
    result = run(smoke=args.smoke, out=args.out, workers=args.workers, repeats=args.repeats, check=args.check,
                 patch_size=args.patch_size, stride=args.stride, reps=tuple(args.reps), reps_40x=tuple(args.reps_40x),
                 slide=args.slide, cases=cases, keep_output=args.keep_output)
    report(result)
    return 0 if all(result[c]["ok"] for c in cases) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())
