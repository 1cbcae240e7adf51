"""What an output folder already holds, and what this run adds to it: resume without losing anything.

:class:`OutFolder` reads the folder once (its manifest, one listing of the PNGs and leftover temp
files) and then answers, per slide: which patches are finished (a whole PNG: header, end chunk and the
size the manifest lists, or a full decode for unlisted ones), whether the earlier run used other
settings (:func:`settings_diff`; refused unless ``overwrite``), and the manifest rows at any moment
(other slides' rows are kept only while their files exist; a failed slide keeps its earlier rows and
loses this run's files).
Also the shard manifests an unsharded rerun folds in. Never imports torch.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from aeutils.errors import PatchError
from aeutils.io import TEMP_RE, path_inside
from aeutils.manifest import SHARD_RE, read_raw_manifest, write_manifest
from aeutils.patches.codec import manifest_row, png_complete
from aeutils.patches.grid import LABEL_DIRS, GridCell, SlidePlan

__all__ = ["OutFolder", "settings_diff", "scan", "check_out", "fold_shard_manifests"]

_TMP_RE = TEMP_RE  # .<target name>.<random>.tmp (aeutils.io.atomic_path)
_PNG_RE = re.compile(r"^(.+)_(\d+)_(\d+)\.png$")


def settings_diff(old: list[dict[str, str]], plan: SlidePlan) -> list[str]:
    """What a slide's earlier rows say about its grid that differs from ``plan`` ("--patch-size 128 (now 64)", ...).

    Only settings that change the pixels of a patch count (size, stride, level, resampling, scale);
    the tissue mask only selects cells (a changed selection is caught as cells that would be lost).
    """
    if not old or not plan.cells:
        return []
    new = manifest_row(plan, plan.cells[0])
    diffs = []
    for opt, col in (("--patch-size", "size"), ("--stride", "stride"), ("--level", "level"),
                     ("resample factor", "resample"), ("--resample-filter", "resample_filter"), ("mpp", "mpp"),
                     ("mpp source", "mpp_source")):
        was = {r.get(col) or "" for r in old} - {""}
        now = new.get(col, "")
        if col in ("resample",) and not was:
            was = {"1"}
        if col == "resample_filter" and not was and any((r.get("resample") or "1") != "1" for r in old):
            was = {"area"}  # resampled rows written before the column: area was extract's only filter then
        if was and now and was != {now}:
            diffs.append(f"{opt} {', '.join(sorted(was))} (now {now})")
    if diffs and diffs[0].startswith("--patch-size") and len(diffs) > 1 and diffs[1].startswith("--stride"):
        if all(r.get("stride") in (None, "", r["size"]) for r in old) and plan.stride == plan.size:
            del diffs[1]  # the default stride (= patch size) followed the patch size
    return diffs


def scan(out: Path) -> tuple[dict[str, set[str]], dict[str, list[Path]]]:
    """One listing of OUT and its label folders: PNG relpaths by slide name, and temp files by target name."""
    pngs: dict[str, set[str]] = {}
    tmps: dict[str, list[Path]] = {}
    for d in ["", *LABEL_DIRS.values()]:
        folder = out / d if d else out
        if not folder.is_dir():
            continue
        for e in os.scandir(folder):
            m = _TMP_RE.match(e.name)
            if m:
                tmps.setdefault(m.group(1), []).append(Path(e.path))
                continue
            if d:
                m = _PNG_RE.match(e.name)
                if m:
                    pngs.setdefault(m.group(1), set()).add(f"{d}/{e.name}")
    return pngs, tmps


def check_out(out: Path) -> None:
    """Create ``out`` if needed and check a file can be written there; raises :class:`PatchError`."""
    if out.exists() and not out.is_dir():
        raise PatchError(f"{out}: --out is an existing file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PatchError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PatchError(f"{out}: the output folder is not writable ({exc.strerror or exc})") from None


def fold_shard_manifests(out: Path, covered: set[str]) -> None:
    """Remove ``manifest.shard-K-of-N.csv`` files all of whose slides this (unsharded) run has redone:
    manifest.csv now holds them (rerunning without --shard is one way to combine shards)."""
    for p in out.iterdir():
        if SHARD_RE.match(p.name):
            try:
                slides = {r["slide"] for r in read_raw_manifest(p)}
            except PatchError:
                continue
            if slides <= covered:
                p.unlink(missing_ok=True)


class OutFolder:
    """The output folder ``out`` of a run over the slides ``names``, with manifest file ``manifest``.

    ``say`` receives the warning lines (rows of vanished files dropped, an ``overwrite`` removal).
    """

    def __init__(self, out: Path, manifest: Path, names: set[str], say: Callable[[str], None]):
        self.out, self.manifest, self.names, self.say = out, manifest, names, say
        old_rows = read_raw_manifest(manifest, say)
        self.on_disk, self.tmps = scan(out)
        self.old_by_slide: dict[str, list[dict[str, str]]] = {}
        for r in old_rows:
            self.old_by_slide.setdefault(r["slide"], []).append(r)
        # Other slides' rows stay only if their files are still there (one warning per slide otherwise).
        self.kept_rows: list[dict[str, str]] = []
        for slide, rows in sorted(self.old_by_slide.items()):
            if slide in names:
                continue
            have = [r for r in rows if r["path"] in self.on_disk.get(slide, ())]
            if len(have) < len(rows):
                say(f"warning: {manifest}: {len(rows) - len(have)} of {len(rows)} rows of slide {slide} dropped "
                    f"(their PNG files are missing)")
            self.kept_rows.extend(have)
        for t in self.tmps.get(manifest.name, ()):
            t.unlink(missing_ok=True)
        self.plans: list[SlidePlan] = []
        self.done: dict[str, dict[str, int | None]] = {}  # slide -> relpath -> PNG bytes (None: unknown)
        self.pending_of: dict[str, list[str]] = {}
        self.kept_n: dict[str, int] = {}
        self.failed: set[str] = set()
        self.qc_new: dict[str, Path] = {}

    def qc_path(self, name: str) -> Path:
        """``OUT/<slide>.qc.png``."""
        return self.out / f"{name}.qc.png"

    def admit(self, plan: SlidePlan, overwrite: bool) -> list[GridCell]:
        """Take ``plan`` into this run; returns its cells still to write (the rest are finished PNGs).

        Raises :class:`PatchError` when the slide was extracted here with other settings or another
        selection of cells (patches would be lost), unless ``overwrite`` (then they are removed). Removes
        the slide's temp files left by an interrupted run.
        """
        name, out = plan.name, self.out
        wanted = {c.relpath(name): c for c in plan.cells}
        earlier = {r["path"] for r in self.old_by_slide.get(name, ())} | self.on_disk.get(name, set())
        stale = sorted(earlier - set(wanted))
        diffs = settings_diff(self.old_by_slide.get(name, []), plan)
        if (stale or diffs) and not overwrite:
            why = ("with " + "; ".join(diffs)) if diffs else (
                "with another selection of cells (--min-tissue, --max-patches, --keep, --annotations or the mask "
                "differ, or an interrupted run with other settings)")
            lost = f"{len(earlier)} patches would be replaced" if diffs else (
                f"{len(stale)} of its patches are not in this grid and would be lost")
            raise PatchError(f"{out}: slide {name} was extracted here {why}; {lost}: use another --out, "
                             f"or --overwrite to replace them")
        if stale or diffs:
            outside = []
            for rel in sorted(earlier):
                inside = path_inside(out, rel)
                if inside is None:
                    outside.append(rel)
                else:
                    inside.unlink(missing_ok=True)
            if outside:
                self.say(f"warning: {self.manifest}: {len(outside)} rows of slide {name} name files outside {out} "
                         f"({outside[0]!r}{', ...' if len(outside) > 1 else ''}); left alone, rows dropped")
            n = len(earlier) - len(outside)
            self.say(f"{name}: --overwrite: removed {n} patches of an earlier run with other settings")
            self.old_by_slide.pop(name, None)
            self.on_disk.pop(name, None)
        for target, files in self.tmps.items():  # this slide's leftovers of an interrupted run
            m = _PNG_RE.match(target)
            if (m and m.group(1) == name) or target == f"{name}.qc.png":
                for t in files:
                    t.unlink(missing_ok=True)
        old_bytes = {r["path"]: int(r["bytes"]) if r.get("bytes") else None for r in self.old_by_slide.get(name, ())}
        present = self.on_disk.get(name, set())
        finished: dict[str, int | None] = {}
        pending = []
        for rel, c in wanted.items():
            if rel in present and png_complete(out / rel, c.size, old_bytes.get(rel)):
                finished[rel] = old_bytes.get(rel) or (out / rel).stat().st_size
            else:
                pending.append(c)
        self.plans.append(plan)
        self.done[name] = finished
        self.kept_n[name] = len(finished)
        self.pending_of[name] = [c.relpath(name) for c in pending]
        if not self.qc_path(name).exists():
            self.qc_new[name] = self.qc_path(name)
        return pending

    def record(self, name: str, paths: list[str], sizes: list[int]) -> None:
        """PNGs of slide ``name`` written (``paths[i]`` is ``sizes[i]`` bytes; extra paths were not written)."""
        fin = self.done[name]
        for rel, nb in zip(paths, sizes):
            fin[rel] = nb

    def rows(self) -> list[dict[str, str]]:
        """Manifest rows: other slides' checked old rows + this run's finished files (failed slides: old rows)."""
        rows = list(self.kept_rows)
        planned = {pl.name for pl in self.plans}
        for name in self.names:
            if name in self.failed or name not in planned:
                redo = set(self.pending_of.get(name, ()))  # not complete on disk: never listed
                rows.extend(r for r in self.old_by_slide.get(name, ())
                            if r["path"] in self.on_disk.get(name, ()) and r["path"] not in redo)
        for pl in self.plans:
            if pl.name not in self.failed:
                fin = self.done[pl.name]
                rows.extend(manifest_row(pl, c, fin[rel]) for c in pl.cells if (rel := c.relpath(pl.name)) in fin)
        return rows

    def write(self) -> Path:
        """Write the manifest of :meth:`rows` atomically; returns its path."""
        return write_manifest(self.manifest, self.rows())

    def summary(self, pl: SlidePlan) -> str:
        """One line per finished slide: patches (new, kept), sampling, scale, and the mask if it is yours."""
        n, k = len(self.done[pl.name]), self.kept_n[pl.name]
        sel = f", {len(pl.cells)} of {pl.grid_cells} tissue cells sampled" if len(pl.cells) < pl.grid_cells else ""
        scale = pl.scale.describe().removeprefix(f"{pl.scale.slide}: ") if pl.scale else ""
        tissue = "" if pl.tissue_source == "auto" else f"; tissue from your mask {pl.tissue_source}"
        return f"{pl.name}: {n} patches ({n - k} new, {k} kept{sel}); {scale}{tissue}"

    def remove_failed(self) -> None:
        """A slide that failed mid-way: remove what this run wrote for it (its earlier rows and files stay)."""
        for name in self.failed:
            if name not in self.pending_of:
                continue
            for rel in self.pending_of[name]:
                (self.out / rel).unlink(missing_ok=True)
            if name in self.qc_new and not self.old_by_slide.get(name):
                self.qc_new[name].unlink(missing_ok=True)
