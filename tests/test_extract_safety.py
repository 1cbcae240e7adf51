"""Nothing lost, nothing half-kept: the seven ways extraction used to lose or half-keep data (issue 10),
each reproduced as a user found it."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from PIL import Image

from aeutils.errors import PatchError, SlideError
from aeutils.patches import drawable_text, extract, plan_slide, read_manifest
from aeutils.patches.runner import Task, TaskResult, blocks, close_handles, run_task
from synthetic import write_slide
from test_cli_extract import run_cli
from test_patches import tree_digest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def slide(tmp_path: Path) -> Path:
    return write_slide(tmp_path / "s.tiff", 512, 512, [(0, 0, 512, 512)], levels=1)


# 1. another --patch-size into the same --out deleted the earlier patches without a word
def test_1_rerun_with_other_patch_size_is_refused_in_one_line(slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert run_cli(slide, "--out", out, "--patch-size", "64", "--quiet", "--workers", "1").returncode == 0
    before = tree_digest(out)
    r = run_cli(slide, "--out", out, "--patch-size", "128", "--quiet", "--workers", "1")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "--patch-size 64 (now 128)" in lines[0] and "another --out" in lines[0] and "--overwrite" in lines[0]
    assert tree_digest(out) == before  # all 64 patches and the manifest untouched
    r = run_cli(slide, "--out", out, "--patch-size", "128", "--quiet", "--workers", "1", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert "removed 64 patches" in r.stdout
    assert {row["size"] for row in read_manifest(out)} == {128} and len(read_manifest(out)) == 16


# 2. resume kept (and listed) a PNG truncated after its header
@pytest.mark.parametrize("listed", [True, False])
def test_2_resume_redoes_truncated_png(slide: Path, tmp_path: Path, listed: bool) -> None:
    ref, out = tmp_path / "ref", tmp_path / "o"
    extract(slide, ref, patch_size=64, workers=1, progress=False)
    extract(slide, out, patch_size=64, workers=1, progress=False)
    victim = out / read_manifest(out)[5]["path"]
    victim.write_bytes(victim.read_bytes()[:200])  # header intact, image data cut
    if not listed:  # a patch written after the last manifest save: no stored size, decoded in full
        (out / "manifest.csv").unlink()
    extract(slide, out, patch_size=64, workers=1, progress=False)
    assert tree_digest(out) == tree_digest(ref)
    Image.open(victim).load()


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


# 3. kill -9 of the parent left pool workers writing for seconds, ending in BrokenPipeError tracebacks
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux")
def test_3_workers_die_with_their_parent(tmp_path: Path) -> None:
    big = write_slide(tmp_path / "big.tiff", 1536, 1024, [(0, 0, 1536, 1024)], levels=1, tile=256)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "aeutils", "extract", str(big), "--out", str(out), "--patch-size", "32",
           "--workers", "2", "--quiet"]
    err = tmp_path / "stderr.txt"
    with open(err, "w") as ferr:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=ferr, start_new_session=True)
        folder = out / "unlabeled"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if folder.is_dir() and sum(1 for _ in folder.glob("*.png")) >= 20:
                break
            time.sleep(0.01)
        workers = _children(proc.pid)
        if proc.poll() is not None or not workers:
            pytest.skip("the run finished before it could be killed")
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, as `kill -9 PID` does
        proc.wait()
        t0 = time.monotonic()
        while any(_alive(w) for w in workers) and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        gone_after = time.monotonic() - t0
    assert not any(_alive(w) for w in workers)
    assert gone_after < 0.5, f"workers outlived the parent by {gone_after:.2f} s"
    n = sum(1 for _ in folder.glob("*.png"))
    time.sleep(0.3)
    assert sum(1 for _ in folder.glob("*.png")) == n  # nobody writes any more
    assert "Traceback" not in err.read_text() and "BrokenPipeError" not in err.read_text()


def _corrupt_tile(path: Path, index: int) -> None:
    import tifffile

    with tifffile.TiffFile(path) as t:
        off, n = t.pages[0].dataoffsets[index], t.pages[0].databytecounts[index]
    data = bytearray(path.read_bytes())
    data[off + 2: off + n] = bytes(n - 2)  # the JPEG start marker stays, the rest is zeros
    path.write_bytes(bytes(data))


# 4. a slide failing mid-way left PNGs and its .qc.png outside the manifest
def _midway_bad_slide(path: Path) -> Path:
    """A slide whose grid plans (the thumbnail comes from level 1) but whose level-0 pixels fail mid-way:
    tissue [0, 512)^2, 64 cells of 64 px; the tile under cell rows 4-5 is corrupt."""
    bad = write_slide(path, 3072, 3072, [(0, 0, 512, 512)], levels=2, tile=128)
    _corrupt_tile(bad, 2 * 24 + 1)  # level 0: 24 tiles a row; tile row 2 = y 256..383
    return bad


def test_4_slide_failing_midway_leaves_nothing_unlisted(tmp_path: Path) -> None:
    bad = _midway_bad_slide(tmp_path / "bad.tiff")
    good = write_slide(tmp_path / "good.tiff", 512, 512, [(0, 0, 512, 512)], levels=1)
    out = tmp_path / "o"
    errs: list[Exception] = []
    written_at_failure: list[int] = []

    def on_error(err: Exception) -> None:
        errs.append(err)
        written_at_failure.append(len(list(out.glob("*/bad_*.png"))))

    extract([bad, good], out, patch_size=64, workers=1, progress=False, on_error=on_error)
    assert len(errs) == 1 and type(errs[0]) is SlideError
    assert str(errs[0]).startswith(f"{bad}: cannot read pixels (")
    assert written_at_failure == [32]  # cell rows 0-3 were written before the failure
    rows = read_manifest(out)
    assert {r["slide"] for r in rows} == {"good"}
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if not p.name.endswith(".qc.png"))
    assert on_disk == sorted(r["path"] for r in rows)  # no PNG outside the manifest
    assert not (out / "bad.qc.png").exists() and (out / "good.qc.png").exists()


def test_4_task_errors_carry_their_kind(tmp_path: Path) -> None:
    # The slide sits inside --out: a message starting with the output folder's path is still a slide error.
    out = tmp_path / "o"
    out.mkdir()
    bad = _midway_bad_slide(out / "bad.tiff")
    plan = plan_slide(bad, patch_size=64)
    tasks = blocks(plan, out, plan.cells)
    try:
        results = [run_task(t) for t in tasks]
    finally:
        close_handles()
    failed = [r for r in results if r.error is not None]
    assert len(failed) == 1 and type(failed[0].error) is SlideError and len(failed[0].sizes) == 32
    assert str(failed[0].error).startswith(f"{bad}: cannot read pixels (")
    # What the pool sends both ways survives pickling, kind included.
    task, result = pickle.loads(pickle.dumps(tasks[0])), pickle.loads(pickle.dumps(failed[0]))
    assert type(task) is Task and task == tasks[0] and task.paths() == tasks[0].paths()
    assert type(result) is TaskResult and type(result.error) is SlideError and str(result.error) == str(failed[0].error)
    # An output folder that cannot be written (a file where the label folder goes): an error about --out.
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "unlabeled").write_text("x")
    r = run_task(tasks[0]._replace(out=str(blocked)))
    assert type(r.error) is PatchError and r.sizes == [] and str(r.error).startswith(f"{blocked}: cannot write patches")
    with pytest.raises(SlideError, match=r"bad\.tiff: cannot read pixels"):
        extract(bad, out, patch_size=64, workers=2, progress=False)


# 5. rerunning on a subset kept other slides' rows without checking their files exist
def test_5_subset_rerun_checks_other_slides_files(tmp_path: Path) -> None:
    a = write_slide(tmp_path / "a.tiff", 512, 512, [(0, 0, 512, 512)], levels=1)
    b = write_slide(tmp_path / "b.tiff", 512, 512, [(0, 0, 512, 512)], levels=1, seed=1)
    out = tmp_path / "o"
    extract([a, b], out, patch_size=128, workers=1, progress=False)
    b_rows = [r for r in read_manifest(out) if r["slide"] == "b"]
    for r in b_rows[:3]:
        (out / r["path"]).unlink()
    lines: list[str] = []
    extract(a, out, patch_size=128, workers=1, progress=False, log=lines.append)
    rows = read_manifest(out)
    assert all((out / r["path"]).is_file() for r in rows)
    assert len([r for r in rows if r["slide"] == "b"]) == len(b_rows) - 3
    assert any(line.startswith("warning:") and "3 of 16 rows of slide b dropped" in line for line in lines), lines


# 6. unusable --out and duplicate slides: say what is wrong with what
def test_6_out_is_a_file_or_not_writable(slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    r = run_cli(slide, "--out", f, "--quiet")
    assert r.returncode == 2 and r.stderr.strip() == f"error: {f}: --out is an existing file, not a folder"
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: then the OS refusal is simulated below instead
        ro.chmod(0o555)
        try:
            r = run_cli(slide, "--out", ro, "--quiet")
        finally:
            ro.chmod(0o755)
        assert r.returncode == 2 and r.stderr.strip().startswith(f"error: {ro}: the output folder is not writable")
    import tempfile

    def refuse(*a, **k):  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PatchError, match=rf"^{ro}: the output folder is not writable \(Permission denied\)$"):
        extract(slide, ro, progress=False)


def test_6_duplicate_slides(slide: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = other / "s.tiff"
    twin.write_bytes(slide.read_bytes())
    out = tmp_path / "o"
    r = run_cli(slide, slide, twin, "--out", out, "--quiet", "--workers", "1")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0] == f"warning: {slide} is given more than once; extracted once"
    assert lines[1] == (f"error: {twin}: slide name 's' is taken by {slide} in this run (patch files are named "
                        f"<slide name>_<x>_<y>.png); rename one of them")
    assert len(lines) == 2 and {r["slide"] for r in read_manifest(out)} == {"s"}


# 7. slide names in other scripts gave matplotlib missing-glyph warnings in the QC titles
def test_7_cjk_slide_name_qc_without_glyph_warnings(tmp_path: Path) -> None:
    name = "前立腺スライド"
    s = write_slide(tmp_path / f"{name}.tiff", 512, 512, [(0, 0, 512, 512)], levels=1)
    out = tmp_path / "o"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract(s, out, patch_size=128, workers=1, progress=False)
    assert (out / f"{name}.qc.png").is_file()
    assert {r["slide"] for r in read_manifest(out)} == {name}
    title = drawable_text(f"{name}: 16 patches")
    assert title.endswith(": 16 patches") and title.isascii() is (not _font_has(name[0]))


def _font_has(ch: str) -> bool:
    from matplotlib import font_manager, ft2font, rcParams

    path = font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"]))
    return ord(ch) in ft2font.FT2Font(path).get_charmap()


def test_slide_error_names_file(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match="nope.tiff: no such file"):
        extract(tmp_path / "nope.tiff", tmp_path / "o", progress=False)


# --------------------------------------------------------------------------------------------- issue 20
def _add_rows(out: Path, paths: list[str]) -> None:
    """Rows of slide ``s`` naming ``paths`` appended to OUT/manifest.csv (a hand-edited or hostile manifest)."""
    from aeutils.manifest import read_raw_manifest, write_manifest

    rows = read_raw_manifest(out / "manifest.csv")
    write_manifest(out / "manifest.csv", rows + [{**rows[0], "path": p} for p in paths])


# 20.1 --overwrite unlinked whatever a manifest row named, also outside --out
def test_20_1_overwrite_never_unlinks_a_row_outside_out(slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    victim, absolute = tmp_path / "victim.txt", tmp_path / "abs.txt"
    victim.write_text("keep me")
    absolute.write_text("keep me too")
    assert run_cli(slide, "--out", out, "--patch-size", "64", "--quiet", "--workers", "1").returncode == 0
    _add_rows(out, ["../victim.txt", str(absolute)])
    r = run_cli(slide, "--out", out, "--patch-size", "128", "--quiet", "--workers", "1", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "keep me" and absolute.read_text() == "keep me too"
    warnings_ = [ln for ln in r.stderr.splitlines() if "outside" in ln]
    assert len(warnings_) == 1 and warnings_[0].startswith(f"warning: {out / 'manifest.csv'}: 2 rows of slide s ")
    assert "removed 64 patches" in r.stdout
    assert {row["path"].startswith("unlabeled/") for row in read_manifest(out)} == {True}


# 20.3 two extract runs into one --out both went on
def test_20_3_a_second_extract_into_a_busy_out_is_refused(slide: Path, tmp_path: Path) -> None:
    from test_io import hold_lock, release

    out = tmp_path / "o"
    holder = hold_lock(out)
    try:
        r = run_cli(slide, "--out", out, "--quiet", "--workers", "1")
    finally:
        release(holder)
    assert r.returncode == 2
    assert r.stderr.strip().startswith(f"error: {out}: in use by another process (pid {holder.pid}")
    assert len(r.stderr.strip().splitlines()) == 1 and not list(out.rglob("*.png"))
    assert run_cli(slide, "--out", out, "--quiet", "--workers", "1").returncode == 0  # free again


def test_20_3_shards_run_beside_each_other_but_not_beside_an_unsharded_run(tmp_path: Path) -> None:
    from aeutils.errors import FolderBusyError
    from aeutils.manifest import merge_manifests
    from test_io import hold_lock, release

    slides = [write_slide(tmp_path / f"{n}.tiff", 256, 256, [(0, 0, 256, 256)], levels=1) for n in "abcd"]
    out = tmp_path / "o"
    other_shard = hold_lock(out, ".aeutils.shard-2-of-2.lock")
    try:
        extract(slides, out, patch_size=128, shard="1/2", workers=1, progress=False)  # beside shard 2: fine
        with pytest.raises(FolderBusyError, match=rf"^{out}: in use by another process \(pid {other_shard.pid}"):
            extract(slides, out, patch_size=128, workers=1, progress=False)
        with pytest.raises(FolderBusyError, match=rf"pid {other_shard.pid}"):
            merge_manifests(out)  # would drop what shard 2 is still writing
    finally:
        release(other_shard)
    extract(slides, out, patch_size=128, shard="2/2", workers=1, progress=False)
    assert merge_manifests(out)[1] == 16


# 20.7 a slide file name that is not UTF-8 crashed write_manifest, and no slide of the run got rows
@pytest.mark.skipif(sys.platform != "linux", reason="file names are bytes on Linux")
def test_20_7_a_non_utf8_slide_name_keeps_its_bytes(tmp_path: Path) -> None:
    s = write_slide(tmp_path / "x.tiff", 256, 256, [(0, 0, 256, 256)], levels=1)
    raw = os.fsencode(tmp_path) + b"/sl\xffide.tiff"
    os.rename(os.fsencode(s), raw)
    other = write_slide(tmp_path / "b.tiff", 256, 256, [(0, 0, 256, 256)], levels=1)
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "aeutils", "extract", raw, str(other), "--out", str(out), "--quiet",
                        "--patch-size", "128", "--workers", "1"], capture_output=True, cwd=ROOT,
                       env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})  # a strict stdout, as on a desktop
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert b"sl\xffide: 4 patches" in r.stdout  # printed as the file system spells it
    rows = read_manifest(out)
    assert sorted({row["slide"] for row in rows}) == ["b", os.fsdecode(b"sl\xffide")]
    assert b"unlabeled/sl\xffide_0_0.png" in (out / "manifest.csv").read_bytes()  # the name's very bytes
    assert all((out / row["path"]).is_file() for row in rows)  # each row names its file
    before = tree_digest(out)
    extract([os.fsdecode(raw), other], out, patch_size=128, workers=1, progress=False)  # resumes: nothing redone
    assert tree_digest(out) == before


# 20.8 a manifest row cut mid-way crashed manifest merge and a rerun of extract (TypeError)
def test_20_8_a_row_cut_short_is_healed_like_a_missing_row(slide: Path, tmp_path: Path) -> None:
    from aeutils.manifest import merge_manifests

    ref, out = tmp_path / "ref", tmp_path / "o"
    extract(slide, ref, patch_size=64, workers=1, progress=False)
    extract(slide, out, patch_size=64, workers=1, progress=False)
    whole = (out / "manifest.csv").read_bytes()
    cut = whole[: whole.rstrip(b"\n").rfind(b"\n") + 40]  # the last row cut after 40 bytes
    (out / "manifest.csv").write_bytes(cut)
    lines: list[str] = []
    path, n = merge_manifests(out, log=lines.append)
    assert n == 63 and len(lines) == 1, lines
    assert lines[0].startswith(f"warning: {out / 'manifest.csv'}: 1 row(s) cut short or damaged (line 65)")
    (out / "manifest.csv").write_bytes(cut)
    r = run_cli(slide, "--out", out, "--patch-size", "64", "--quiet", "--workers", "1")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "cut short" in r.stderr and tree_digest(out) == tree_digest(ref)  # its PNG checked again and listed


# 20.13 a dangling link in --mask-dir was "no mask for slide"; a link loop "no such file"
def test_20_13_links_to_nowhere_and_loops_are_named(slide: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    os.symlink(tmp_path / "moved" / "s.png", masks / "s.png")
    r = run_cli(slide, "--out", tmp_path / "o", "--mask-dir", masks, "--quiet", "--workers", "1")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: {masks / 's.png'}: the mask of slide s is a dangling symbolic link "
                                f"(to {tmp_path / 'moved' / 's.png'})")
    loop = tmp_path / "loop.svs"
    os.symlink(loop.name, loop)
    r = run_cli(loop, "--out", tmp_path / "o", "--quiet", "--workers", "1")
    assert r.returncode == 2 and r.stderr.strip() == f"error: {loop}: symbolic link loop"
    os.symlink("loop.png", tmp_path / "loop.png")
    r = run_cli(slide, "--out", tmp_path / "o", "--mask", tmp_path / "loop.png", "--quiet", "--workers", "1")
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'loop.png'}: symbolic link loop"


# 20.14 temp files of killed writes survived successful reruns
def test_20_14_temp_files_of_killed_writes_are_removed_by_the_rerun(slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    extract(slide, out, patch_size=64, workers=1, progress=False)
    want = tree_digest(out)
    left = [out / "unlabeled" / ".gone_0_0.png.a1b2c3d4e5f6.tmp", out / ".manifest.csv.k2j4h6g8.tmp",
            out / ".gone.qc.png.0123abcd.tmp"]
    mine = [out / "notes.tmp", out / "unlabeled" / "keep.txt"]
    for p in left + mine:
        p.write_bytes(b"half")
    extract(slide, out, patch_size=64, workers=1, progress=False)
    assert not any(p.exists() for p in left) and all(p.exists() for p in mine)
    assert {k: v for k, v in tree_digest(out).items() if k not in ("notes.tmp", "unlabeled/keep.txt")} == want


# 20.15 --mask given the slide itself, or an array with NaN, counted every cell as tissue
def test_20_15_a_mask_that_is_the_slide_or_holds_nan_is_refused(slide: Path, tmp_path: Path) -> None:
    import numpy as np

    r = run_cli(slide, "--out", tmp_path / "o", "--mask", slide, "--quiet", "--workers", "1")
    assert r.returncode == 2
    assert r.stderr.strip().startswith(f"error: {slide}: the mask is the slide itself")
    mask = np.ones((64, 64), np.float32)
    mask[3, 4] = np.nan
    with pytest.raises(PatchError, match=r"^mask array: the mask holds 1 NaN or infinite values"):
        extract(slide, tmp_path / "o", mask=mask, workers=1, progress=False)
    import tifffile

    tifffile.imwrite(tmp_path / "m.tif", mask)
    with pytest.raises(PatchError, match=rf"^{tmp_path / 'm.tif'}: the mask holds 1 NaN"):
        extract(slide, tmp_path / "o", mask=tmp_path / "m.tif", workers=1, progress=False)
    assert not list((tmp_path / "o").rglob("*.png"))
