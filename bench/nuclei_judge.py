"""How the nuclei judge's parameters were fixed, on VALIDATION images only, and its sanity checks.

    python bench/nuclei_judge.py            # the grid on 12 validation patches of 128 px per bundled slide (~2 min)
    python bench/nuclei_judge.py --smoke    # one parameter set, 1 patch per slide (seconds; pytest runs this)

For every (sigma, min_area, min_distance) of the grid, the mean object F1 (:mod:`aeutils.metrics.nuclei`) of
the sanity pairs (:func:`aeutils.metrics.nuclei.sanity_pairs`): a 1 px shift (a nuisance: it should cost
little), x2 bicubic, x4 bicubic and x4 bilinear (degradations, in falling order of quality). The rule: among
the settings that rank shift1 > x2 bicubic > x4 bicubic > x4 bilinear, the one with the largest gap between
the nuisance and x4 bicubic (the SR input's degradation): the judge that tells a real loss of nuclear detail
from a pixel of misregistration best. The chosen setting is what ``aeutils.metrics.nuclei.PARAMS`` holds.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aeutils.metrics import nuclei as N  # noqa: E402

ORDER = ("shift1", "x2_bicubic", "x4_bicubic", "x4_bilinear")
GRID = dict(sigma=(1.0, 1.5, 2.0), min_area=(20, 40, 60), min_distance=(0, 5, 8))


def grid_scores(hr, grid=GRID) -> list[dict]:
    """One row per parameter set: its fields, the mean F1 of each sanity pair, ``ordered`` and ``gap``."""
    pairs = N.sanity_pairs(hr)
    rows = []
    for sigma, min_area, min_distance in itertools.product(grid["sigma"], grid["min_area"], grid["min_distance"]):
        p = N.NucleiParams(sigma, min_area, min_distance)
        f1 = {k: float(N.nuclei_scores(*pairs[k], p)["nuclei_f1"].mean()) for k in ("self", *ORDER)}
        rows.append({"sigma": sigma, "min_area": min_area, "min_distance": min_distance, **f1,
                     "ordered": all(f1[a] > f1[b] for a, b in zip(ORDER, ORDER[1:])),
                     "gap": f1["shift1"] - f1["x4_bicubic"]})
    return rows


def choose(rows: list[dict]) -> dict:
    """The rule: the largest gap among the ordered rows (among all if none is ordered)."""
    ok = [r for r in rows if r["ordered"]] or rows
    return max(ok, key=lambda r: r["gap"])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12, help="validation patches per bundled slide (default 12)")
    ap.add_argument("--size", type=int, default=128, help="patch side, level-0 px (default 128)")
    ap.add_argument("--smoke", action="store_true", help="1 patch per slide, the shipped parameters only")
    args = ap.parse_args(argv)
    from aeutils.speed import cpu_description
    from aeutils.sr.bench import bundled

    t0 = time.perf_counter()
    hr = bundled("val", 1 if args.smoke else args.n, args.size)
    grid = {k: (getattr(N.PARAMS, k),) for k in GRID} if args.smoke else GRID
    rows = grid_scores(hr, grid)
    print(f"{len(hr)} validation patches of {args.size} px; mean object F1 (IoU >= {N.IOU}) per sanity pair:")
    print(f"{'sigma':>6}{'min_area':>9}{'min_dist':>9}" + "".join(f"{k:>12}" for k in ORDER) + f"{'gap':>8} ordered")
    for r in rows:
        print(f"{r['sigma']:>6g}{r['min_area']:>9d}{r['min_distance']:>9d}" + "".join(f"{r[k]:>12.3f}" for k in ORDER)
              + f"{r['gap']:>8.3f} {'yes' if r['ordered'] else 'no'}")
    best = choose(rows)
    shipped = (N.PARAMS.sigma, N.PARAMS.min_area, N.PARAMS.min_distance)
    pick = (best["sigma"], best["min_area"], best["min_distance"])
    print(f"chosen: sigma {pick[0]:g}, min_area {pick[1]}, min_distance {pick[2]} "
          f"({'= aeutils.metrics.nuclei.PARAMS' if pick == shipped else f'PARAMS holds {shipped}'}); "
          f"{time.perf_counter() - t0:.0f} s on {cpu_description()['model']}")
    return best


if __name__ == "__main__":
    main()
