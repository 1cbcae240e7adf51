"""aeutils.sr: the SRGAN networks, the trainer (tiny runs on synthetic patches), exact resume, its
checkpoints, one-line errors of ``python -m aeutils sr train``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from patchdirs import write_patches

from aeutils import cli
from aeutils.errors import CheckpointError, TrainingError
from aeutils.sr.arch import PRESETS, Discriminator, Generator, GeneratorConfig
from aeutils.sr.checkpoint import load_generator, save_generator
from aeutils.sr.config import SRConfig
from aeutils.sr.degrade import downscale, upscale_bicubic
from aeutils.sr.train import train_srgan

#: 8 px LR -> 32 px HR crops of 37 px patches, the tiny networks, two phases of a few steps each
FAST = dict(preset="tiny", hr_size=32, batch_size=2, pretrain_steps=3, gan_steps=4, val_every=2, val_limit=2,
            device="cpu", progress=False, verbose=False)


@pytest.fixture(scope="module")
def patch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # height 400: training rows above 300 px, validation at y = 300 (the region split of aeutils.data)
    return write_patches(tmp_path_factory.mktemp("srpatches"), size=37, height=400)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_generator(path).model.state_dict()


def test_generator_shapes_starts_as_bicubic_and_reach_within_its_radius() -> None:
    g = Generator(GeneratorConfig(2, 8)).eval()
    lr = torch.rand(2, 3, 10, 12)
    assert g(lr).shape == (2, 3, 40, 48)
    assert torch.allclose(g(lr), upscale_bicubic(lr), atol=1e-6)  # zero output conv: bicubic exactly
    torch.nn.init.normal_(g.up[-1].weight, std=0.1)
    x = torch.rand(1, 3, 40, 40)
    x2 = x.clone()
    x2[0, :, 20, 20] += 1.0
    changed = (g(x2) - g(x)).abs().sum((0, 1)).nonzero()
    reach = max(80 - int(changed.min()), int(changed.max()) - 83) / 4  # LR px from the 4x4 block of pixel 20
    assert 0 < reach <= g.receptive_radius()
    assert Discriminator(8)(torch.rand(3, 3, 32, 48)).shape == (3,)
    assert PRESETS["paper"][0] == GeneratorConfig(16, 64)


def test_tiny_run_writes_its_folder_and_generators(patch_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = train_srgan(patch_dir, out, **FAST)
    assert r.stopped == "done" and r.step == 7
    assert {p.name for p in out.iterdir()} >= {"config.json", "last.pt", "best.pt", "pixel.pt", "log.csv", "tensorboard"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["patches_dir"] == str(patch_dir) and cfg["content"] == "encoding"
    phases = [row["phase"] for row in r.history]
    assert phases[0] == "pixel" and phases[-1] == "gan" and r.history[-1]["step"] == 7
    assert {"val_psnr", "val_stlpips", "val_haarpsi", "train_adversarial", "train_content", "train_d_loss"} <= set(r.history[-1])
    g = load_generator(out / "best.pt").model
    assert g(torch.rand(2, 3, 5, 7)).shape == (2, 3, 20, 28)
    # rerunning the finished run does nothing and touches nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    again = train_srgan(patch_dir, out, **FAST)
    assert again.stopped == "nothing_to_do" and before == {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}


def test_resume_is_bit_identical(patch_dir: Path, tmp_path: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    train_srgan(patch_dir, whole, **FAST)
    assert train_srgan(patch_dir, split, max_steps=5, **FAST).stopped == "max_steps"  # stopped in the GAN phase
    train_srgan(patch_dir, split, **FAST)
    a, b = load_generator(whole / "last.pt"), load_generator(split / "last.pt")
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    da, db = a.train_state["discriminator"], b.train_state["discriminator"]
    assert all(torch.equal(v, db[k]) for k, v in da.items())


def test_pixel_only_and_none_content(patch_dir: Path, tmp_path: Path) -> None:
    r = train_srgan(patch_dir, tmp_path / "pix", **{**FAST, "gan_steps": 0})
    assert {row["phase"] for row in r.history} == {"pixel"} and (tmp_path / "pix" / "best.pt").is_file()
    r = train_srgan(patch_dir, tmp_path / "adv", **{**FAST, "content": "none", "pretrain_steps": 0})
    assert "train_content" not in r.history[-1] and "train_adversarial" in r.history[-1]


def test_config_errors_name_the_option() -> None:
    for bad, flag in ((dict(hr_size=30), "--hr-size 30"), (dict(content="vgg"), "--content 'vgg'"),
                      (dict(content="vgg19"), "--vgg19-weights"), (dict(lr=0.0), "--lr"),
                      (dict(pretrain_steps=0, gan_steps=0), "--gan-steps"), (dict(select="fid"), "--select")):
        with pytest.raises(TrainingError, match=flag.replace("(", r"\(")):
            SRConfig(**bad)
    assert SRConfig(preset="auto").sizes("cuda")[0] == GeneratorConfig(16, 64)
    assert SRConfig(preset="auto", n_blocks=3).sizes("cpu")[0] == GeneratorConfig(3, 32)


def test_cli_bad_input_is_one_line(patch_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*args: str | Path) -> tuple[int, str]:
        code = cli.main(["sr", "train", *map(str, args)])
        return code, capsys.readouterr().err

    code, err = run(tmp_path / "missing", "--out", tmp_path / "o1")
    assert code == 2 and err.startswith("error: ") and str(tmp_path / "missing") in err and err.count("\n") == 1
    code, err = run(patch_dir, "--out", tmp_path / "o2", "--hr-size", "64", "--preset", "tiny", "--no-progress")
    assert code == 2 and "smaller than --hr-size 64" in err and err.count("\n") == 1
    assert not (tmp_path / "o2" / "last.pt").exists()
    code, err = run(patch_dir, "--out", tmp_path / "o3", "--hr-size", "30")
    assert code == 2 and "multiple of 4" in err
    # an existing run with other settings is refused, not overwritten
    out = tmp_path / "o4"
    train_srgan(patch_dir, out, **FAST)
    code, err = run(patch_dir, "--out", out, "--preset", "tiny", "--hr-size", "32", "--batch-size", "2",
                    "--pretrain-steps", "3", "--gan-steps", "9", "--no-progress")
    assert code == 2 and "other settings" in err and "gan_steps 4 -> 9" in err


def test_checkpoint_digests_catch_corruption(tmp_path: Path) -> None:
    p = save_generator(tmp_path / "g.pt", Generator(GeneratorConfig(1, 8)), meta={"note": "x"})
    assert load_generator(p).config == GeneratorConfig(1, 8)
    payload = torch.load(p, weights_only=True)
    payload["model"]["head.0.bias"][0] += 1
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="sha256"):
        load_generator(tmp_path / "bad.pt")
    from aeutils.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match="not an mscopy-AE checkpoint"):
        load_checkpoint(p)  # a generator is not an autoencoder


def test_lr_inputs_are_the_bench_degradation(patch_dir: Path) -> None:
    hr = torch.rand(1, 3, 32, 32)
    assert downscale(hr).shape == (1, 3, 8, 8)


def test_shipped_generator_loads_offline_and_beats_bicubic_on_validation() -> None:
    import aeutils
    from aeutils.data import sample_patches
    from aeutils.metrics import psnr

    g = aeutils.load_pretrained_sr()
    assert isinstance(g, Generator) and not g.training and g.config == GeneratorConfig(6, 32)
    hr = sample_patches(4, 96, split="val", slide=1)
    lr = downscale(hr)
    with torch.no_grad():
        sr = g(lr)
    assert sr.shape == hr.shape and 0 <= float(sr.min()) and float(sr.max()) <= 1
    assert float(psnr(sr, hr).mean()) > float(psnr(upscale_bicubic(lr), hr).mean()) + 0.3


def test_a_busy_run_folder_is_refused(tmp_path: Path) -> None:
    """One writer per run folder, as the autoencoder's train: the second process gets one line naming the pid."""
    from test_io import hold_lock, release

    from aeutils.errors import FolderBusyError

    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
            train_srgan(tmp_path / "no-such-patches", run, **FAST)
    finally:
        release(holder)
