"""``python -m aeutils extract``: bad inputs give one error line each and exit 2 while the good slides
still get done; no torch import; a ``kill -9`` mid-run is resumed to a byte-identical tree."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aeutils.patches import extract, read_manifest
from synthetic import asap_xml, rect_polygon, write_slide
from test_patches import tree_digest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str | Path, env_extra: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "aeutils", "extract", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
    )


@pytest.fixture()
def no_torch(tmp_path: Path) -> dict[str, str]:
    """PYTHONPATH with a ``torch`` that refuses to import: extraction must never touch it."""
    d = tmp_path / "notorch"
    d.mkdir()
    (d / "torch.py").write_text("raise ImportError('the extract command imported torch')\n")
    return {"PYTHONPATH": os.pathsep.join([str(d), os.environ.get("PYTHONPATH", "")])}


def test_bad_inputs_one_line_each_and_good_slides_done(
    tmp_path: Path, sample_slide_path: Path, no_torch: dict[str, str]
) -> None:
    good = write_slide(tmp_path / "good.tiff", 1024, 768, [(0, 0, 600, 600)], levels=1)
    blank = write_slide(tmp_path / "blank.tiff", 512, 512, [], levels=1)
    small = write_slide(tmp_path / "small.tiff", 256, 256, [(0, 0, 256, 256)], levels=1)
    weird = write_slide(tmp_path / "weird.tiff", 512, 512, [(0, 0, 512, 512)], levels=1)
    text = tmp_path / "notes.svs"
    text.write_text("not a slide\n")
    cut = tmp_path / "cut.svs"
    cut.write_bytes(sample_slide_path.read_bytes()[:200_000])
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "good.xml").write_text(asap_xml([rect_polygon(0, 0, 300, 600)]))
    (ann / "weird.xml").write_text("<ASAP_Annotations><Annotations><Annotation PartOfGroup=")
    missing = tmp_path / "missing.svs"
    out = tmp_path / "out"
    r = run_cli(missing, text, good, cut, blank, small, weird, "--out", out, "--patch-size", "300",
                "--annotations", ann, "--workers", "1", "--quiet", env_extra=no_torch)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr
    assert len(lines) == 6, r.stderr
    assert all(line.startswith("error: ") for line in lines)
    problems = {
        "missing.svs": "no such file",
        "notes.svs": "not a slide",
        "cut.svs": "truncated or corrupt",
        "blank.tiff": "no tissue found",
        "small.tiff": "larger than level 0",
        "weird.xml": "malformed XML",
    }
    for line, (name, problem) in zip(lines, problems.items()):
        assert name in line and problem in line, line
    rows = read_manifest(out)
    assert {r["slide"] for r in rows} == {"good"} and len(rows) == 4  # 2 x 2 cells of 300 px in the 600 px tissue
    assert {(r["x"], r["label"]) for r in rows} == {(0, 1), (300, 0)}
    assert "4 patches" in r.stdout and "1 of 7 slides" in r.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--level", "3"], r"level 3 out of range \(the slide has levels 0..1\)"),
        (["--mpp", "0.1"], r"s\.tiff: --mpp 0\.1 is finer than level 0 \(0\.5 um/px\); upsampling is not done"),
        (["--mpp", "7"], r"s\.tiff: patch size 181 px is larger than level 1 resampled to 7 um/px \(18 x 18 px\)"),
        (["--assume-mpp", "900"], r"--assume-mpp 900 is outside the plausible 0\.05-20 um/px"),
        (["--shard", "3/2"], r"--shard K/N needs 1 <= K <= N, got 3/2"),
        (["--max-patches", "0"], "max patches must be a positive integer"),
        (["--keep", "tumour"], "needs annotations"),
        (["--annotations", "nope.xml"], "nope.xml: no such annotation file"),
        (["--patch-size", "0"], "patch size must be a positive integer"),
    ],
)
def test_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    slide = write_slide(tmp_path / "s.tiff", 256, 256, [(0, 0, 256, 256)], levels=2)
    r = run_cli(slide, "--out", tmp_path / "o", "--quiet", *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    import re

    assert re.search(message, lines[0]), lines[0]


def test_help() -> None:
    r = run_cli("--help")
    assert r.returncode == 0 and "--min-tissue" in r.stdout and "--annotations" in r.stdout


def test_kill_9_then_resume_is_byte_identical(tmp_path: Path) -> None:
    slide = write_slide(tmp_path / "big.tiff", 1200, 768, [(0, 0, 1200, 768)], levels=1, tile=256)
    ref = tmp_path / "ref"
    extract(slide, ref, patch_size=48, workers=1, progress=False)
    total = len(read_manifest(ref))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "aeutils", "extract", str(slide), "--out", str(out), "--patch-size", "48",
           "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    folder = out / "unlabeled"
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.is_dir() and sum(1 for p in folder.iterdir() if p.suffix == ".png") >= 20:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its workers, mid-run
    proc.wait()
    done = {p: p.stat().st_ino for p in folder.glob("*.png")}
    if len(done) >= total:
        pytest.skip("the run finished before it could be killed")
    assert len(done) >= 20
    r = run_cli(slide, "--out", out, "--patch-size", "48", "--workers", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert tree_digest(out) == tree_digest(ref)
    assert all(p.stat().st_ino == ino for p, ino in done.items())  # finished patches were kept, not redone
