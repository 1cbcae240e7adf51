"""``manifest.csv``: the one table of extracted patches (columns, reading, atomic writing, merging shards).

One row per finished PNG, sorted by slide, level, y, x. Columns (:data:`MANIFEST_COLUMNS`):

==================  =========================================================================================
path                PNG path relative to the output folder (POSIX), ``<label dir>/<slide>_<x>_<y>.png``
slide               slide name (file stem)
level               pyramid level read
x, y                level-0 pixels of the patch's top-left corner
size                patch side in output pixels (pixels of ``level``, divided by ``resample``)
mpp                 microns per pixel of the patch pixels, empty when the scale is unknown
tissue_fraction     0..1 of the patch covered by the tissue mask
tumour_fraction     0..1 covered by tumour annotations (empty without annotations)
label               1 tumour, 0 normal, empty without annotations
downsample          level-0 pixels per patch pixel (the level's downsample x ``resample``)
slide_width/height  level-0 size of the slide in pixels
stride              grid step in output pixels
resample            resample factor (level pixels per patch pixel; 1 = the level as is)
mpp_source          ``slide`` (the file's tag), ``assumed`` (``--assume-mpp``) or empty (unknown)
bytes               size of the PNG file (resume checks kept files against it)
tissue_source       ``auto`` (tissue detected on a thumbnail), or your mask: its file, or ``array``
resample_filter     filter of the resampling (``lanczos``, ``area``, ...: :data:`aeutils.scale.FILTERS`);
                    empty when ``resample`` is 1 (and in manifests written before it existed)
==================  =========================================================================================

Text: UTF-8; a slide file name that is not UTF-8 (bytes on Linux) is kept byte for byte
(``surrogateescape``, :data:`ENCODING`), so each row names its very file. A row cut mid-way (a damaged
file) is dropped with one warning line, as if it were missing.

Sharded runs (``extract --shard K/N``) each write ``manifest.shard-K-of-N.csv`` beside the PNGs;
:func:`merge_manifests` (``python -m aeutils manifest merge OUT``) combines them into ``manifest.csv``.

This module never imports torch.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from aeutils.errors import PatchError
from aeutils.io import atomic_write_bytes, folder_lock, path_inside

__all__ = [
    "MANIFEST_NAME", "MANIFEST_COLUMNS", "REQUIRED_COLUMNS", "SHARD_RE", "read_manifest", "read_raw_manifest",
    "write_manifest", "shard_manifest_name", "merge_manifests", "add_cli_arguments", "run_cli",
]

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = (
    "path", "slide", "level", "x", "y", "size", "mpp", "tissue_fraction", "tumour_fraction", "label",
    "downsample", "slide_width", "slide_height", "stride", "resample", "mpp_source", "bytes",
    "tissue_source", "resample_filter",
)
#: Columns every manifest has (later ones were added over time; read_manifest gives None without them).
REQUIRED_COLUMNS = MANIFEST_COLUMNS[:10]
#: File names of shard manifests (groups: K, N), as :func:`shard_manifest_name` writes them.
SHARD_RE = re.compile(r"^manifest\.shard-(\d+)-of-(\d+)\.csv$")


def shard_manifest_name(k: int, n: int) -> str:
    """File name of shard ``k`` of ``n``'s manifest (``manifest.shard-K-of-N.csv``)."""
    return f"manifest.shard-{k}-of-{n}.csv"


#: Lock files of ``extract --shard`` runs (:func:`shard_lock_name`), beside the folder's one-writer lock.
SHARD_LOCK_GLOB = ".aeutils.shard-*.lock"


def shard_lock_name(k: int, n: int) -> str:
    """File name of the lock of an ``extract --shard K/N`` run (:func:`aeutils.io.folder_lock`)."""
    return f".aeutils.shard-{k}-of-{n}.lock"


def _sort_key(r: dict[str, str]) -> tuple[Any, ...]:
    return (r["slide"], int(r["level"]), int(r["y"]), int(r["x"]), r["path"])


#: Text encoding of manifests: UTF-8, with file names that are not UTF-8 (bytes on Linux) kept byte for
#: byte (Python's ``surrogateescape``: the row's path names the very file, as ``os.fsdecode`` does).
ENCODING, ERRORS = "utf-8", "surrogateescape"


def _complete(r: dict[str, Any]) -> bool:
    """Whether a CSV row has every column of the header and sortable numbers (not a line cut mid-way)."""
    if None in r or any(v is None for v in r.values()):
        return False
    try:
        _sort_key(r)
    except (KeyError, TypeError, ValueError):
        return False
    return True


def read_raw_manifest(path: Path, say: Callable[[str], None] | None = None) -> list[dict[str, str]]:
    """Rows (strings) of a manifest CSV, or ``[]`` if ``path`` does not exist. Raises :class:`PatchError`.

    A row cut mid-way (a damaged or truncated file: too few fields, or no numbers where they belong) is
    dropped with one warning line to ``say`` (default stderr), as if it were missing: a rerun of
    ``extract`` then checks that patch's PNG again.
    """
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding=ENCODING, errors=ERRORS) as f:
            reader = csv.DictReader(f)
            rows, cut = [], []
            for r in reader:
                (rows if _complete(r) else cut).append((reader.line_num, r))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise PatchError(f"{path}: unreadable manifest ({exc})") from None
    header = reader.fieldnames or []
    if (rows or cut) and set(REQUIRED_COLUMNS) - set(header):
        raise PatchError(f"{path}: not a patch manifest (missing columns {sorted(set(REQUIRED_COLUMNS) - set(header))})")
    if cut:
        lines = ", ".join(str(n) for n, _ in cut[:3]) + (", ..." if len(cut) > 3 else "")
        (say or _warn)(f"warning: {path}: {len(cut)} row(s) cut short or damaged (line {lines}); dropped, "
                       f"their patches are checked again by a rerun of extract")
    return [r for _, r in rows]


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_manifest(path: Path, rows: Iterable[dict[str, str]]) -> Path:
    """Write ``rows`` (string values) sorted to ``path`` atomically (:data:`ENCODING`); returns ``path``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in sorted(rows, key=_sort_key):
        w.writerow(r)
    return atomic_write_bytes(path, buf.getvalue().encode(ENCODING, ERRORS))


def _opt(r: dict[str, str], key: str, kind: Any) -> Any:
    v = r.get(key)
    return kind(v) if v else None


def read_manifest(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of ``OUT/manifest.csv`` (``out_dir`` = OUT or a manifest CSV itself), typed.

    Each row: ``path`` (str, relative to OUT), ``slide`` (str), ``level, x, y, size`` (int; x, y level-0
    pixels, size patch pixels), ``mpp`` (float or None), ``tissue_fraction`` (float), ``tumour_fraction``
    (float or None), ``label`` (0, 1 or None), ``downsample`` (float: level-0 px per patch px),
    ``slide_width, slide_height, stride`` (int), ``resample`` (float), ``mpp_source`` (str), ``bytes``
    (int), ``tissue_source``, ``resample_filter`` (str; None when not resampled); these last ones are
    None in manifests written before they existed.
    Raises :class:`PatchError` if the manifest is missing or malformed.
    """
    p = Path(out_dir)
    csv_path = p if p.suffix == ".csv" else p / MANIFEST_NAME
    if not csv_path.is_file():
        raise PatchError(f"{csv_path}: no such manifest (run `python -m aeutils extract ... --out {csv_path.parent}`)")
    rows = []
    for r in read_raw_manifest(csv_path):
        try:
            rows.append({
                "path": r["path"], "slide": r["slide"], "level": int(r["level"]), "x": int(r["x"]),
                "y": int(r["y"]), "size": int(r["size"]), "mpp": float(r["mpp"]) if r["mpp"] else None,
                "tissue_fraction": float(r["tissue_fraction"]),
                "tumour_fraction": float(r["tumour_fraction"]) if r["tumour_fraction"] else None,
                "label": int(r["label"]) if r["label"] else None,
                "downsample": _opt(r, "downsample", float),
                "slide_width": _opt(r, "slide_width", int), "slide_height": _opt(r, "slide_height", int),
                "stride": _opt(r, "stride", int), "resample": _opt(r, "resample", float),
                "mpp_source": r.get("mpp_source") or None, "bytes": _opt(r, "bytes", int),
                "tissue_source": r.get("tissue_source") or None,
                "resample_filter": r.get("resample_filter") or None,
            })
        except (TypeError, ValueError) as exc:
            raise PatchError(f"{csv_path}: bad row {r} ({exc})") from None
    return rows


def merge_manifests(out: str | os.PathLike[str], *, log: Any = None) -> tuple[Path, int]:
    """Merge ``OUT/manifest.csv`` and every ``OUT/manifest.shard-K-of-N.csv`` into ``OUT/manifest.csv``.

    A slide's rows come from the newest file that lists it (a slide is never in two shards of one
    ``N``; a rerun without ``--shard`` supersedes older shard files). Rows whose PNG is missing are
    dropped with one warning line per slide (via ``log``, default stderr). The shard files are removed
    once the merged manifest is written. Returns (manifest path, number of rows).
    """
    out = Path(out)
    if not out.is_dir():
        raise PatchError(f"{out}: no such output folder")
    with folder_lock(out, "manifest merge", exclusive_of=(SHARD_LOCK_GLOB,)):  # no extract writing there
        return _merge(out, log or _warn)


def _merge(out: Path, say: Callable[[str], None]) -> tuple[Path, int]:
    sources = [p for p in out.iterdir() if SHARD_RE.match(p.name)]
    main = out / MANIFEST_NAME
    if not sources and not main.is_file():
        raise PatchError(f"{out}: no manifest.csv and no manifest.shard-K-of-N.csv to merge")
    files = sorted([*([main] if main.is_file() else []), *sources], key=lambda p: p.stat().st_mtime_ns)
    by_slide: dict[str, list[dict[str, str]]] = {}
    for f in files:  # oldest first: newer files replace a slide's rows
        rows = read_raw_manifest(f, say)
        slides: dict[str, list[dict[str, str]]] = {}
        for r in rows:
            slides.setdefault(r["slide"], []).append(r)
        by_slide.update(slides)
    merged = []
    for slide, rows in sorted(by_slide.items()):
        have = [r for r in rows if (png := path_inside(out, r["path"])) is not None and png.is_file()]
        if len(have) < len(rows):
            say(f"warning: {out}: {len(rows) - len(have)} rows of slide {slide} dropped (their PNG files are missing)")
        merged.extend(have)
    path = write_manifest(main, merged)
    for p in sources:
        p.unlink(missing_ok=True)
    return path, len(merged)


# ---------------------------------------------------------------------------------------------------
# CLI: python -m aeutils manifest merge OUT...


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m aeutils manifest``."""
    parser.add_argument("action", choices=("merge",),
                        help="merge: combine OUT/manifest.shard-K-of-N.csv (from extract --shard) into OUT/manifest.csv")
    parser.add_argument("out", nargs="+", type=Path, metavar="OUT", help="extraction output folders")


def run_cli(args: argparse.Namespace) -> int:
    """Merge each OUT's shard manifests; one line per folder."""
    for out in args.out:
        path, n = merge_manifests(out)
        print(f"{n} patches in {path}")
    return 0
