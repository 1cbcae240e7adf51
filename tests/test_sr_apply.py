"""``sr apply``: seamless tiles (tiled == one-shot), the slide TIFF (4x size and finer mpp, white background,
what aeutils.slides and OpenSlide open), resume after an interruption and after kill -9, image folders,
one-line errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openslide
import pytest
import torch
from PIL import Image

from synthetic import write_slide

from aeutils import cli
from aeutils.slides import open_slide
from aeutils.sr.apply import sr_folder, sr_margin, sr_slide, super_resolve_image, super_resolve_tensor
from aeutils.sr.arch import Generator, GeneratorConfig
from aeutils.sr.checkpoint import save_generator

ROOT = Path(__file__).resolve().parents[1]


def small_generator(seed: int = 0, std: float = 0.05) -> Generator:
    """A 2-block generator with a non-zero output conv (an untrained one is plain bicubic)."""
    torch.manual_seed(seed)
    g = Generator(GeneratorConfig(2, 8))
    torch.nn.init.normal_(g.up[-1].weight, std=std)
    return g.eval()


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("srslide")
    return write_slide(d / "syn.tiff", 1024, 768, ((128, 128, 512, 384), (640, 384, 896, 640)), levels=3)


@pytest.fixture(scope="module")
def gen_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_generator(tmp_path_factory.mktemp("g") / "g.pt", small_generator())


def test_tiled_equals_one_shot_across_tile_borders() -> None:
    g = small_generator()
    lr = torch.rand(3, 150, 141)  # cores of 64: borders at 64 and 128 in both directions, ragged edges
    one = g(lr[None])[0]
    tiled = super_resolve_tensor(g, lr, core=64)
    assert tiled.shape == one.shape == (3, 600, 564)
    assert (tiled - one).abs().max().item() < 1e-4
    # with too little margin the seams show: the test can fail
    cut = super_resolve_tensor(g, lr, core=64, margin=4)
    assert (cut - one).abs().max().item() > 1e-3
    assert sr_margin(g) % 4 == 0 and sr_margin(g) >= g.receptive_radius()


def test_bf16_tiles_are_seamless_and_near_fp32() -> None:
    from aeutils import speed

    g = small_generator()
    lr = torch.rand(3, 150, 141)
    with torch.inference_mode():
        one = g(lr[None])[0]
        one_bf16 = speed.forward(g, lr[None], speed.Choice("channels_last+bf16"))[0]
    tiled = super_resolve_tensor(g, lr, core=64, precision="channels_last+bf16")
    # seamless in bf16 too (measured: equal to printing precision), bf16 noise against fp32 a few grey levels
    assert (tiled - one_bf16).abs().max().item() < 1e-3
    assert 0 < (tiled - one).abs().max().item() < 0.02 and (tiled - one).abs().mean().item() < 2e-3


def test_resampled_reads_use_the_training_degradation_unless_told(tmp_path: Path, syn: Path, gen_ckpt: Path) -> None:
    from aeutils.scale import read_scaled, resolve_scale
    from aeutils.slidemap import read_settings
    from aeutils.sr.degrade import SLIDE_FILTER

    g = small_generator()
    r = sr_slide(syn, tmp_path / "d", model=g, mpp=1.5, core=64, precision="fp32", progress=False)
    assert SLIDE_FILTER == "bicubic" and read_settings(r.path)["filter"] == "bicubic"
    told = sr_slide(syn, tmp_path / "b", model=g, mpp=1.5, resample_filter="bicubic", core=64, precision="fp32",
                    progress=False)
    assert told.path.read_bytes() == r.path.read_bytes()
    with open_slide(syn) as s:  # the filters give different LR pixels here, so the choice shows in the output
        lr = {f: read_scaled(s, resolve_scale(s, mpp=1.5, filter=f), 64, 64, 64, 64) for f in ("bicubic", "lanczos")}
    assert not np.array_equal(lr["bicubic"], lr["lanczos"])
    code = cli.main(["sr", "apply", str(syn), "--out", str(tmp_path / "l"), "--checkpoint", str(gen_ckpt), "--mpp", "1.5",
                     "--resample-filter", "lanczos", "--tile", "64", "--precision", "fp32", "--no-progress"])
    lanczos = tmp_path / "l" / "syn.sr.tiff"
    assert code == 0 and read_settings(lanczos)["filter"] == "lanczos"
    with open_slide(lanczos) as a, open_slide(r.path) as b:
        assert not np.array_equal(a.read_region(256, 256, 0, (256, 256)), b.read_region(256, 256, 0, (256, 256)))


def test_slide_tiff_is_4x_finer_white_outside_tissue_and_opens(tmp_path: Path, syn: Path) -> None:
    g = small_generator(std=0.005)  # mild detail: JPEG tiles keep it within a few grey levels
    r = sr_slide(syn, tmp_path, model=g, core=64, precision="fp32", progress=False)
    assert r.path == tmp_path / "syn.sr.tiff" and r.size == (4096, 3072) and r.mpp == pytest.approx(0.125)
    assert 0 < r.tiles < 16 * 12 and r.done == r.tiles
    with open_slide(r.path) as s:
        assert s.dimensions == (4096, 3072) and s.mpp == pytest.approx(0.125) and s.level_count >= 3
        tissue = s.read_region(4 * 200, 4 * 200, 0, (128, 128))
        glass = s.read_region(4 * 20, 4 * 700, 0, (128, 128))
    assert glass.min() == 255 and tissue.mean() < 230
    assert float(openslide.OpenSlide(str(r.path)).properties["openslide.mpp-x"]) == pytest.approx(0.125)
    # the tissue equals the generator on the same region read at once (JPEG tiles: a few grey levels)
    with open_slide(syn) as s:
        lr = s.read_region(192, 192, 0, (64, 64))
    ref = super_resolve_image(g, lr, core=64, precision="fp32")[64:192, 64:192]
    with open_slide(r.path) as s:
        got = s.read_region(4 * 192 + 60, 4 * 192 + 64, 0, (136, 128)).astype(int)
    err = [np.abs(got[:, dx:dx + 128] - ref.astype(int)).mean() for dx in (0, 4, 8)]  # placed where it belongs
    assert err[1] < 3 and err[1] < min(err[0], err[2]) / 2
    assert sr_slide(syn, tmp_path, model=g, core=64, precision="fp32", progress=False).up_to_date


def test_interrupted_run_resumes_to_the_same_file(tmp_path: Path, syn: Path) -> None:
    g = small_generator()
    ref = sr_slide(syn, tmp_path / "ref", model=g, core=64, precision="fp32", progress=False)
    out, seen = tmp_path / "run", []

    def stop(ty: int, tx: int) -> None:
        seen.append((ty, tx))
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sr_slide(syn, out, model=g, core=64, precision="fp32", progress=False, on_tile=stop)
    assert not (out / "syn.sr.tiff").exists()
    notes: list[str] = []
    again = sr_slide(syn, out, model=g, core=64, precision="fp32", progress=False, log=notes.append)
    assert again.done == ref.tiles - 3 and f"resuming: 3 of {ref.tiles} tiles" in notes[0]
    assert (out / "syn.sr.tiff").read_bytes() == ref.path.read_bytes()
    assert not (out / ".syn.sr.work").exists()


def test_kill_9_then_rerun_resumes(tmp_path: Path, syn: Path, gen_ckpt: Path) -> None:
    out = tmp_path / "sr"
    work = out / ".syn.sr.work"
    args = [sys.executable, "-m", "aeutils", "sr", "apply", str(syn), "--out", str(out), "--checkpoint", str(gen_ckpt),
            "--tile", "64", "--batch-size", "1", "--all", "--no-progress"]
    env = {**os.environ, "MSCOPY_CPU_SPEED": "fp32", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(work.glob("r*.npy"))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = len(list(work.glob("r*.npy")))
    assert saved >= 3 and not (out / "syn.sr.tiff").exists()
    rerun = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {saved} of 192 tiles already super-resolved" in rerun.stderr
    assert f"{192 - saved} of 192 tissue tiles" in rerun.stdout and "Mpx/s" in rerun.stdout
    with open_slide(out / "syn.sr.tiff") as s:
        assert s.dimensions == (4096, 3072)


def test_folder_of_images_gives_4x_pngs(tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (33, 30, 3), dtype=np.uint8)).save(src / "b.jpg")
    (src / "notes.txt").write_text("not an image")
    paths = sr_folder(src, tmp_path / "out", model=small_generator(), core=64, precision="fp32", progress=False)
    assert [p.name for p in paths] == ["a.png", "b.png"]
    with Image.open(paths[0]) as im:
        assert im.size == (280, 160)
    with Image.open(paths[1]) as im:
        assert im.size == (120, 132)


def test_bad_inputs_one_error_line(tmp_path: Path, syn: Path, gen_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*args: str | Path) -> tuple[int, str]:
        code = cli.main(["sr", "apply", *map(str, args)])
        return code, capsys.readouterr().err

    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide")
    code, err = run(junk, "--out", tmp_path / "o", "--checkpoint", gen_ckpt, "--no-progress")
    assert code == 2 and err.startswith(f"error: {junk}") and err.count("\n") == 1
    code, err = run(syn, "--out", tmp_path / "o", "--checkpoint", tmp_path / "nope.pt")
    assert code == 2 and err == f"error: {tmp_path / 'nope.pt'}: no such checkpoint file\n"
    code, err = run(syn, "--out", tmp_path / "o", "--checkpoint", gen_ckpt, "--level", "7", "--no-progress")
    assert code == 2 and err.startswith(f"error: {syn}") and err.count("\n") == 1
    blank = write_slide(tmp_path / "blank.tiff", 600, 400, (), levels=2)
    code, err = run(blank, "--out", tmp_path / "o", "--checkpoint", gen_ckpt, "--no-progress")
    assert code == 2 and "no tissue found" in err
    out = tmp_path / "o"
    assert not out.exists() or not [p for p in out.iterdir() if p.suffix in (".tiff", ".tmp")]


def test_folder_refuses_its_own_folder_as_out_and_two_images_of_one_name(tmp_path: Path) -> None:
    """Outputs are <stem>.png: the input folder as --out, or a.jpg beside a.png, would skip images silently."""
    from aeutils.errors import AeutilsError

    src = tmp_path / "imgs"
    src.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src / "a.png")
    with pytest.raises(AeutilsError, match="is the input folder"):
        sr_folder(src, src, model=small_generator(), core=64, precision="fp32", progress=False)
    Image.fromarray(rgb).save(src / "a.jpg")
    with pytest.raises(AeutilsError, match="same name as"):
        sr_folder(src, tmp_path / "out", model=small_generator(), core=64, precision="fp32", progress=False)
    assert sorted(p.name for p in src.iterdir()) == ["a.jpg", "a.png"] and not (tmp_path / "out").exists()


def test_a_second_sr_apply_into_a_busy_folder_is_refused(tmp_path: Path, syn: Path) -> None:
    """One writer per --out: two runs on one slide would share (and remove) one work folder."""
    from test_io import hold_lock, release

    from aeutils.errors import FolderBusyError

    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
            sr_slide(syn, out, model=small_generator(), precision="fp32", progress=False)
    finally:
        release(holder)
    assert not any(out.glob("*.sr.tiff"))
