"""Patch extraction: ``aeutils.patches.extract`` vs a naive loop, same slide, same grid, same run.

Two cases, each with every arm timed in the same run (interleaved repeats):

* **level 0** (speed): a large multi-level pyramidal TIFF (JPEG tiles, 256 px, levels 1/4/16) made by tiling
  the bundled sample slide's level-0 pixels (default 6 x 4 copies = 13320 x 11868 px at 0.499 um/px);
  181 px level-0 patches. naive: one ``OpenSlide.read_region`` + ``Image.convert("RGB").save(png)``
  (PIL defaults) per patch; the outputs are compared pixel for pixel (they must be identical).
* **resampled** (fidelity and speed; ``--mpp 0.5`` on a 40x pyramid): real H&E taken as 0.5 um/px (the
  bundled prostate, 0.5 assumed, and the CMU skin sample, 0.499 tagged: ``--sources``), tiled (default
  3 x 3 copies, so that the per-slide costs, tissue mask and QC figure, weigh about as on a real slide),
  enlarged 2x with PIL bicubic (smooth: a box enlargement would be inverted exactly by a box filter),
  JPEG q90, levels 4x apart (0.25 / 1.0 / 4.0 um/px, as TCGA 40x files). No level is within 10 % of
  0.5 um/px, so extract reads level 0 and downsamples it x2; the tiled source is then exactly the true
  0.5 um/px pixels of every patch's footprint. Arms: the naive loop (per patch, a careful
  resample: ``read_region`` of the footprint plus 4 output px of margin, clipped to the slide, PIL
  Lanczos onto the patch's exact output grid, PIL PNG save) and ``extract(..., resample_filter=F)``
  for each filter F (``--filters``). Printed per arm: median and worst per-patch PSNR against the true
  pixels and against the naive patches, patches/s and the speed-up over the naive loop. The default
  filter must come within 0.5 dB (median vs the true pixels) of the naive resample, or the case fails.
  The naive arm has OpenSlide paint every level-0 pixel (4 per output pixel, ~20-45 ns/px); extract
  decodes them straight from the JPEG tiles (:mod:`aeutils.tiffread`, ~6 ns/px, used only where checked
  bit-identical to OpenSlide at open).

In both, naive is one process given the grid for free (its planning is not timed) and aeutils is
``extract(...)`` end to end (tissue mask, grid, QC figure, strip reads, process pool of ``--workers``,
default every core, atomic PNG writes, manifest). Printed: patches/s of each arm, the wall-clock ratio,
and the CPU time per patch of each (process + pool children: the part of the gain that does not depend
on free cores; on a busy machine the wall-clock ratio shrinks towards it), and the CPU
(:func:`aeutils.speed.cpu_description`). :func:`run` returns the numbers as a dict.

    python bench/extract.py                 # both cases, 2 interleaved repeats (~4-5 min on 2 busy cores)
    python bench/extract.py --smoke         # small slides, sparse grids: seconds (CI)

The slides are cached under ``--out`` (default ``bench/out/``, which also holds the arms' outputs).
:func:`build_slide` is also used by ``bench/encode_slide.py``.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"  # default --out: the cached slides and the arms' outputs
SAMPLE_MPP = 0.499
#: bundled slides a resampled case can be built from (aeutils.sample_slides order)
SOURCES = ("cmu", "prostate")


def source_pixels(source: str = "cmu") -> np.ndarray:
    """Level-0 pixels (H x W x 3 uint8) of a bundled slide: ``"cmu"`` (the default sample, 0.499 um/px) or
    ``"prostate"`` (0.5 um/px assumed)."""
    from aeutils import sample_slides
    from aeutils.slides import open_slide

    with open_slide(sample_slides()[SOURCES.index(source)]) as s:
        return s.read_region(0, 0, 0, s.dimensions)


def build_slide(path: Path, reps_x: int, reps_y: int, *, tile: int = 256, quality: int = 80, upsample: int = 1,
                source: str = "cmu", mpp: float | None = None) -> Path:
    """Tile a bundled slide's level-0 pixels ``reps_x`` x ``reps_y`` times into a JPEG-tiled pyramid (cached).

    ``upsample`` > 1 first enlarges the source that many times (PIL bicubic: smooth, as a scanner's
    optics). The file is tagged ``mpp`` um/px at level 0 (default ``0.499 / upsample``); levels 1/4/16.
    """
    if path.is_file():
        return path
    import tifffile
    from PIL import Image

    src = source_pixels(source)
    if upsample > 1:
        src = np.asarray(Image.fromarray(src).resize((src.shape[1] * upsample, src.shape[0] * upsample),
                                                     Image.Resampling.BICUBIC))
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
    px_per_cm = 1e4 / (mpp or SAMPLE_MPP / upsample)
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


def naive_resampled(slide: Path, cells: list, out: Path, name: str, factor: float, downsample: float) -> float:
    """The careful naive resample, per patch: ``read_region`` of the patch's level-0 footprint plus 4
    output px of margin (clipped to the slide, so no black border enters the filter), PIL Lanczos onto
    the same output-pixel grid as extract (``box`` at the patch's exact level-0 position), PIL PNG save."""
    import openslide

    t0 = time.perf_counter()
    osr = openslide.OpenSlide(str(slide))
    w0, h0 = osr.dimensions
    m = math.ceil(4 * factor)
    for c in cells:
        target = out / c.relpath(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        ox, oy = round(c.x / downsample), round(c.y / downsample)
        x0, y0 = max(0, math.floor(ox * factor) - m), max(0, math.floor(oy * factor) - m)
        x1, y1 = min(w0, math.ceil((ox + c.size) * factor) + m), min(h0, math.ceil((oy + c.size) * factor) + m)
        box = (ox * factor - x0, oy * factor - y0, (ox + c.size) * factor - x0, (oy + c.size) * factor - y0)
        osr.read_region((x0, y0), 0, (x1 - x0, y1 - y0)).convert("RGB").resize(
            (c.size, c.size), Image.Resampling.LANCZOS, box=box).save(target)
    osr.close()
    return time.perf_counter() - t0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _time_arms(arms: dict[str, Callable[[], None]], repeats: int) -> dict[str, dict[str, float]]:
    """Run every arm ``repeats`` times, interleaved (A B C, C B A, ...) so that load from other processes
    hits them alike; per arm the mean wall ``s``, the best wall ``s_best`` (other load only ever slows a
    run down) and the mean CPU seconds ``cpu_s`` (this process + the pool's children)."""
    tot = {k: [0.0, 0.0, float("inf")] for k in arms}
    order = list(arms)
    for i in range(repeats):
        for key in (order if i % 2 == 0 else order[::-1]):
            c0, t0 = cpu_seconds(), time.perf_counter()
            arms[key]()
            t, c = time.perf_counter() - t0, cpu_seconds() - c0
            tot[key][0] += t
            tot[key][1] += c
            tot[key][2] = min(tot[key][2], t)
            if repeats > 1:
                print(f"  repeat {i + 1}: {key:8s} {t:7.2f} s wall, {c:7.2f} s CPU")
    return {k: {"s": v[0] / repeats, "cpu_s": v[1] / repeats, "s_best": v[2]} for k, v in tot.items()}


def _describe(name: str, slide: Path, plan: Any) -> str:
    """Which reader aeutils uses for the plan's level (printed with the slide and the grid)."""
    import openslide

    from aeutils import tiffread

    w, h = plan.dimensions
    with openslide.OpenSlide(str(slide)) as osr:
        reader = tiffread.describe(slide, plan.level, osr)
    tiffread.close_readers()
    print(f"[{name}] slide: {slide.name} ({w} x {h} px at level 0, {slide.stat().st_size / 2**20:.0f} MiB), "
          f"{len(plan.cells)} tissue patches of {plan.size} px, stride {plan.stride}; "
          f"{plan.scale.describe().split(': ', 1)[1]}")
    print(f"[{name}] aeutils reads level {plan.level} by {reader}; load average {os.getloadavg()[0]:.1f} before")
    return reader


def _case(name: str, slide: Path, run_dir: Path, *, patch_size: int, stride: int | None,
          workers: int, repeats: int, check: int | None, keep: bool) -> dict[str, Any]:
    """Level 0: time both arms; returns the numbers (and ``ok`` False with ``problem`` on a mismatch)."""
    from aeutils.patches import extract, plan_slide, read_manifest

    plan = plan_slide(slide, patch_size, 0, stride)
    reader = _describe(name, slide, plan)
    shutil.rmtree(run_dir, ignore_errors=True)
    a_dir, n_dir = run_dir / "aeutils", run_dir / "naive"

    def run_ours() -> None:
        shutil.rmtree(a_dir, ignore_errors=True)
        extract(slide, a_dir, patch_size=patch_size, stride=stride, workers=workers, progress=False,
                log=lambda m: None)

    def run_naive() -> None:
        shutil.rmtree(n_dir, ignore_errors=True)
        naive(slide, plan.cells, n_dir, plan.name)

    t = _time_arms({"aeutils": run_ours, "naive": run_naive}, repeats)
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
    (t_ours, c_ours), (t_naive, c_naive) = ((t[k]["s"], t[k]["cpu_s"]) for k in ("aeutils", "naive"))
    res.update(
        compared=len(picks), identical=all(p == float("inf") for p in psnrs), max_abs_diff=maxdiff,
        psnr_min=min(psnrs), psnr_mean=float(np.mean([min(p, 99.0) for p in psnrs])),
        naive_patches_per_s=n / t_naive, ours_patches_per_s=n / t_ours, speedup=t_naive / t_ours,
        naive_cpu_ms_per_patch=1e3 * c_naive / n, ours_cpu_ms_per_patch=1e3 * c_ours / n, cpu_ratio=c_naive / c_ours,
        naive_mib=sum((n_dir / r).stat().st_size for r in ours) / 2**20,
        ours_mib=sum((a_dir / r).stat().st_size for r in ours) / 2**20,
        naive_s=t_naive, ours_s=t_ours, repeats=repeats, naive_s_best=t["naive"]["s_best"],
        ours_s_best=t["aeutils"]["s_best"], speedup_best=t["naive"]["s_best"] / t["aeutils"]["s_best"],
    )
    if not res["identical"]:
        res.update(ok=False, problem="level-0 pixels differ between the arms")
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return res


def _fidelity(folder: Path, rels: list[str], truth: Callable[[str], np.ndarray],
              naive_dir: Path | None) -> dict[str, Any]:
    """Median / worst per-patch PSNR of the PNGs ``rels`` under ``folder`` against the true pixels
    (``truth(rel)``) and against the naive arm's PNGs (``naive_dir``), and whether all equal the naive ones."""
    vs_truth, vs_naive = [], []
    for rel in rels:
        a = np.asarray(Image.open(folder / rel).convert("RGB"))
        vs_truth.append(_psnr(a, truth(rel)))
        if naive_dir is not None:
            vs_naive.append(_psnr(a, np.asarray(Image.open(naive_dir / rel).convert("RGB"))))
    out: dict[str, Any] = {"psnr_truth_median": float(np.median(vs_truth)), "psnr_truth_worst": min(vs_truth)}
    if naive_dir is not None:
        out.update(psnr_naive_median=float(np.median(vs_naive)), psnr_naive_worst=min(vs_naive),
                   identical_to_naive=all(p == float("inf") for p in vs_naive))
    return out


def _resampled_case(name: str, slide: Path, source: str, run_dir: Path, *, patch_size: int, stride: int | None,
                    filters: tuple[str, ...], workers: int, repeats: int, keep: bool) -> dict[str, Any]:
    """``--mpp 0.5`` on a 40x pyramid of ``source`` tiled and enlarged 2x: every filter's extract and the
    naive Lanczos loop, timed interleaved; fidelity of each against the true pixels and the naive patches."""
    from aeutils.patches import extract, plan_slide, read_manifest
    from aeutils.scale import DEFAULT_FILTER

    plan = plan_slide(slide, patch_size, None, stride, mpp=0.5)
    reader = _describe(name, slide, plan)
    src = source_pixels(source)  # the true 0.5 um/px pixels, tiled: output pixel (ox, oy) = src[oy % H, ox % W]
    ih, iw = src.shape[:2]
    D = plan.downsample
    origin = {c.relpath(plan.name): (round(c.x / D), round(c.y / D)) for c in plan.cells}

    def truth(rel: str) -> np.ndarray:
        ox, oy = origin[rel]
        return src[(oy + np.arange(patch_size))[:, None] % ih, (ox + np.arange(patch_size))[None, :] % iw]

    shutil.rmtree(run_dir, ignore_errors=True)
    n_dir = run_dir / "naive"
    arms: dict[str, Callable[[], None]] = {}

    def run_naive() -> None:
        shutil.rmtree(n_dir, ignore_errors=True)
        naive_resampled(slide, plan.cells, n_dir, plan.name, plan.factor, plan.downsample)

    arms["naive"] = run_naive
    for flt in filters:
        def run_ours(flt: str = flt) -> None:
            shutil.rmtree(run_dir / flt, ignore_errors=True)
            extract(slide, run_dir / flt, patch_size=patch_size, stride=stride, mpp=0.5, resample_filter=flt,
                    workers=workers, progress=False, log=lambda m: None)
        arms[flt] = run_ours
    t = _time_arms(arms, repeats)

    rels = sorted(origin)
    res: dict[str, Any] = {"case": name, "source": source, "ok": True, "patches": len(rels), "level": plan.level,
                           "factor": plan.factor, "mpp": plan.mpp, "reader": reader, "repeats": repeats,
                           "tile_decoding": reader.startswith("tile decoding"), "default": DEFAULT_FILTER}
    theirs = sorted(q.relative_to(n_dir).as_posix() for q in n_dir.rglob("*.png"))
    n = len(rels)
    nv = t["naive"]
    res["naive"] = {**_fidelity(n_dir, rels, truth, None), "s": nv["s"], "s_best": nv["s_best"],
                    "patches_per_s": n / nv["s"], "cpu_ms_per_patch": 1e3 * nv["cpu_s"] / n,
                    "mib": sum((n_dir / r).stat().st_size for r in rels) / 2**20}
    res["filters"] = {}
    for flt in filters:
        ours = sorted(r["path"] for r in read_manifest(run_dir / flt))
        if ours != rels or theirs != rels:
            res.update(ok=False, problem=f"{flt}: aeutils wrote {len(ours)} patches, naive {len(theirs)}, "
                                         f"the plan has {len(rels)}")
            return res
        a = t[flt]
        res["filters"][flt] = {
            **_fidelity(run_dir / flt, rels, truth, n_dir), "s": a["s"], "s_best": a["s_best"],
            "patches_per_s": n / a["s"], "cpu_ms_per_patch": 1e3 * a["cpu_s"] / n,
            "speedup": nv["s"] / a["s"], "speedup_best": nv["s_best"] / a["s_best"],
            "cpu_ratio": nv["cpu_s"] / a["cpu_s"],
            "mib": sum((run_dir / flt / r).stat().st_size for r in rels) / 2**20,
        }
        res["filters"][flt]["gap_db"] = res["naive"]["psnr_truth_median"] - res["filters"][flt]["psnr_truth_median"]
    d = res["filters"].get(DEFAULT_FILTER)
    if d is not None and d["gap_db"] > 0.5:
        res.update(ok=False, problem=f"the default filter ({DEFAULT_FILTER}) is {d['gap_db']:.2f} dB below the naive "
                                     f"Lanczos resample (median PSNR vs the true pixels)")
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return res


def cpu_name() -> str:
    """The CPU model and whether it has AVX512_BF16 / AMX (:func:`aeutils.speed.cpu_description`)."""
    from aeutils.speed import cpu_description

    d = cpu_description()
    return f"{d['model']} (AVX512_BF16 {'yes' if d['avx512_bf16'] else 'no'}, AMX {'yes' if d['amx_bf16'] else 'no'})"


def run(*, smoke: bool = False, out: Path = OUT, workers: int | None = None, repeats: int = 2,
        check: int | None = None, patch_size: int = 181, stride: int | None = None,
        reps: tuple[int, int] = (6, 4), reps_40x: tuple[int, int] = (3, 3), slide: Path | None = None,
        cases: tuple[str, ...] = ("level0", "resampled"), sources: tuple[str, ...] = SOURCES,
        filters: tuple[str, ...] = ("lanczos", "bicubic", "area"), keep_output: bool = False) -> dict[str, Any]:
    """Both cases; returns ``{"cpu", "workers", "cores", "load", "level0": {...}, "resampled": {source: {...}}}``.

    ``level0``: patches/s of each arm, ``speedup`` (naive wall / aeutils wall), CPU ms per patch and pixel
    agreement. ``resampled[source]``: ``naive`` and ``filters[F]`` (one per filter), each with
    ``psnr_truth_median`` / ``psnr_truth_worst`` (dB, per patch, vs the true 0.5 um/px pixels), the
    filters also ``psnr_naive_*`` (vs the naive patches), ``gap_db`` (naive median - this median),
    ``speedup`` (naive wall / this wall), ``speedup_best``, ``cpu_ratio``; ``ok`` False if the default
    filter is more than 0.5 dB below the naive resample.
    """
    from aeutils.patches import default_workers

    if smoke:
        reps, reps_40x, repeats = (2, 1), (1, 1), 1
        stride = stride if stride is not None else 2 * patch_size
    nworkers = workers or default_workers()
    result: dict[str, Any] = {"workers": nworkers, "cores": default_workers()}
    mode = "smoke" if smoke else "run"
    if "level0" in cases:
        s0 = slide or build_slide(out / f"bench_sample_{reps[0]}x{reps[1]}.tiff", *reps)
        result["level0"] = _case("level 0", s0, out / mode / "level0", patch_size=patch_size, stride=stride,
                                 workers=nworkers, repeats=repeats, check=check, keep=keep_output)
    if "resampled" in cases:
        result["resampled"] = {}
        for source in sources:
            s40 = build_slide(out / f"bench_{source}40x_{reps_40x[0]}x{reps_40x[1]}.tiff", *reps_40x, upsample=2,
                              quality=90, source=source, mpp=0.25)
            result["resampled"][source] = _resampled_case(
                f"--mpp 0.5 on 40x {source}", s40, source, out / mode / f"resampled_{source}", patch_size=patch_size,
                stride=stride, filters=filters, workers=nworkers, repeats=repeats, keep=keep_output)
    result["load"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result["cpu"] = cpu_name()  # after the runs: it imports torch, which the forked pools need not carry
    return result


def report(result: dict[str, Any]) -> None:
    """Print the figures of :func:`run`."""
    print(f"CPU: {result['cpu']}, {result['cores']} cores; load average {result['load']:.1f} after the run")
    r = result.get("level0")
    if r is not None and not r["ok"]:
        print(f"[{r['case']}] MISMATCH: {r['problem']}", file=sys.stderr)
    elif r is not None:
        same = ("all identical" if r["identical"] else
                f"max abs diff {r['max_abs_diff']}, PSNR naive vs aeutils min {r['psnr_min']:.1f} dB, "
                f"mean {r['psnr_mean']:.1f} dB")
        print(f"[{r['case']}] same patches: {r['patches']} files, {r['compared']} compared pixel for pixel, {same}")
        print(f"[{r['case']}] naive loop (read_region + PIL PNG save, 1 process): {r['naive_patches_per_s']:8.1f} "
              f"patches/s  ({r['naive_s']:.2f} s wall, {r['naive_cpu_ms_per_patch']:.1f} ms CPU/patch, "
              f"{r['naive_mib']:.1f} MiB)")
        print(f"[{r['case']}] aeutils extract ({result['workers']} workers, end to end): "
              f"{r['ours_patches_per_s']:8.1f} patches/s  ({r['ours_s']:.2f} s wall, "
              f"{r['ours_cpu_ms_per_patch']:.1f} ms CPU/patch, {r['ours_mib']:.1f} MiB)")
        print(f"[{r['case']}] speed-up: {r['speedup']:.2f}x wall on {result['cores']} cores "
              f"(mean of {r['repeats']}; best run of each arm: {r['speedup_best']:.2f}x); "
              f"CPU per patch: naive / aeutils = {r['cpu_ratio']:.2f}x")
    for r in result.get("resampled", {}).values():
        if not r["ok"] and "filters" not in r:
            print(f"[{r['case']}] MISMATCH: {r['problem']}", file=sys.stderr)
            continue
        nv = r["naive"]
        print(f"[{r['case']}] {r['patches']} patches; PSNR per patch vs the true 0.5 um/px pixels (median / worst) "
              f"and vs the naive patches; speed vs the naive loop (wall, mean of {r['repeats']}; CPU per patch)")
        print(f"[{r['case']}]   naive loop (read_region + PIL Lanczos + PNG save, 1 process): "
              f"{nv['psnr_truth_median']:5.2f} / {nv['psnr_truth_worst']:5.2f} dB, {nv['patches_per_s']:7.1f} patches/s "
              f"({nv['s']:.2f} s, {nv['cpu_ms_per_patch']:.1f} ms CPU/patch)")
        for flt, f in r["filters"].items():
            vs = ("identical" if f["identical_to_naive"] else
                  f"{f['psnr_naive_median']:5.1f} / {f['psnr_naive_worst']:5.1f} dB")
            tag = " (default)" if flt == r["default"] else ""
            print(f"[{r['case']}]   extract --resample-filter {flt:8s}{tag:10s}: {f['psnr_truth_median']:5.2f} / "
                  f"{f['psnr_truth_worst']:5.2f} dB ({0.0 - f['gap_db']:+.2f} dB vs naive), vs naive {vs}; "
                  f"{f['patches_per_s']:7.1f} patches/s ({f['s']:.2f} s, {f['cpu_ms_per_patch']:.1f} ms CPU/patch): "
                  f"{f['speedup']:.2f}x the naive loop (best runs {f['speedup_best']:.2f}x; CPU {f['cpu_ratio']:.2f}x)")
        if not r["ok"]:
            print(f"[{r['case']}] FAILED: {r['problem']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from aeutils.scale import FILTERS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="small slides and sparse grids (seconds)")
    p.add_argument("--slide", type=Path, default=None, help="level-0 case: use this slide instead of building one")
    p.add_argument("--reps", type=int, nargs=2, default=(6, 4), metavar=("X", "Y"), help="level-0 case tilings (6 4)")
    p.add_argument("--reps-40x", type=int, nargs=2, default=(3, 3), metavar=("X", "Y"),
                   help="resampled case: tilings of the 2x enlarged source (3 3)")
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES),
                   help="resampled case: bundled slides to build 40x pyramids from (both)")
    p.add_argument("--filters", nargs="+", choices=tuple(FILTERS), default=["lanczos", "bicubic", "area"],
                   help="resampled case: extract's --resample-filter arms (lanczos bicubic area)")
    p.add_argument("--case", choices=("level0", "resampled", "both"), default="both")
    p.add_argument("--patch-size", type=int, default=181)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="extract's processes (default: every core)")
    p.add_argument("--check", type=int, default=None, help="level-0 case: compare this many random patches (all)")
    p.add_argument("--out", type=Path, default=OUT, help="folder for the cached slides and the outputs (bench/out)")
    p.add_argument("--keep-output", action="store_true", help="keep the PNGs under --out")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs of each arm, averaged (2)")
    args = p.parse_args(argv)
    cases = ("level0", "resampled") if args.case == "both" else (args.case,)
    t0 = time.perf_counter()
    result = run(smoke=args.smoke, out=args.out, workers=args.workers, repeats=args.repeats, check=args.check,
                 patch_size=args.patch_size, stride=args.stride, reps=tuple(args.reps), reps_40x=tuple(args.reps_40x),
                 slide=args.slide, cases=cases, sources=tuple(args.sources), filters=tuple(args.filters),
                 keep_output=args.keep_output)
    report(result)
    print(f"bench time {time.perf_counter() - t0:.0f} s")
    ok = [result["level0"]["ok"]] if "level0" in result else []
    ok += [r["ok"] for r in result.get("resampled", {}).values()]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())
