"""aeutils.training: exact resume, NaN handling, the CLI and its outputs, loss terms, RNG state, the shipped model."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from patchdirs import write_patches

from aeutils.checkpoint import load_checkpoint, read_checkpoint
from aeutils.errors import TrainingError
from aeutils.model import Autoencoder, AutoencoderConfig
from aeutils.training import (
    ReconstructionLoss,
    Trainer,
    make_train_step,
    parse_config,
    parse_duration,
    rng_state,
    set_rng_state,
    train,
)

TINY = AutoencoderConfig(n_blocks=1, widths=(8, 8, 4))
FAST = dict(batch_size=4, crop=33, config=TINY, device="cpu", workers=0, progress=False, val_limit=8, lr=3e-3)


@pytest.fixture(scope="module")
def patch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_patches(tmp_path_factory.mktemp("patches"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def test_resume_is_exact(patch_dir: Path, tmp_path: Path) -> None:
    straight = train(patch_dir, tmp_path / "a", epochs=2, **FAST)
    assert straight.epochs_done == 2 and straight.stopped == "epochs"
    steps = straight.global_step // 2
    first = train(patch_dir, tmp_path / "b", epochs=2, max_steps=steps, **FAST)  # "interrupted" after epoch 1
    assert first.epochs_done == 1 and first.stopped == "max_steps"
    wb1 = _weights(tmp_path / "b" / "last.pt")
    resumed = train(patch_dir, tmp_path / "b", epochs=2, resume=True, **FAST)
    assert resumed.epochs_done == 2 and resumed.global_step == straight.global_step
    wa, wb = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert any(not torch.equal(wb1[k], wb[k]) for k in wa if wa[k].is_floating_point())  # epoch 2 did train
    # the CSV log covers both epochs once
    with open(tmp_path / "b" / "log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    # nothing left to do
    again = train(patch_dir, tmp_path / "b", epochs=2, resume=True, **FAST)
    assert again.stopped == "nothing_to_do" and again.epochs_done == 2
    # the training state loads with weights_only and has what a resume needs
    ts = load_checkpoint(tmp_path / "b" / "last.pt").train_state
    assert {"optimizer", "scaler", "scheduler", "rng", "epoch", "global_step"} <= set(ts)
    assert ts["epoch"] == 2


def test_existing_run_needs_resume(patch_dir: Path, tmp_path: Path) -> None:
    train(patch_dir, tmp_path / "r", epochs=1, **FAST)
    with pytest.raises(TrainingError, match="--resume"):
        train(patch_dir, tmp_path / "r", epochs=1, **FAST)
    assert train(patch_dir, tmp_path / "r", epochs=1, resume="auto", **FAST).stopped == "nothing_to_do"
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(patch_dir, tmp_path / "empty", epochs=1, resume=True, **FAST)
    with pytest.raises(TrainingError, match="architecture"):
        train(patch_dir, tmp_path / "r", epochs=2, resume=True, **{**FAST, "config": AutoencoderConfig(n_blocks=0, widths=(8, 8, 4))})


def test_nan_loss_stops_and_keeps_last_good_checkpoint(patch_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "nan"
    train(patch_dir, run, epochs=1, **FAST)
    before = (run / "last.pt").read_bytes()
    original = ReconstructionLoss.forward
    calls = {"n": 0}

    def poisoned(self, pred, target):  # type: ignore[no-untyped-def]
        total, parts = original(self, pred, target)
        calls["n"] += 1
        return (total * float("nan") if calls["n"] >= 2 else total), parts

    monkeypatch.setattr(ReconstructionLoss, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"non-finite training loss.*epoch 2.*last good checkpoint"):
        train(patch_dir, run, epochs=3, resume=True, **FAST)
    assert (run / "last.pt").read_bytes() == before
    assert load_checkpoint(run / "last.pt").meta["epoch"] == 1


def test_nan_step_does_not_touch_weights() -> None:
    model = Autoencoder(TINY)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = make_train_step(model, opt, lambda y, x: (y - x).pow(2).mean() * float("inf"), torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingError, match="non-finite"):
        step(torch.rand(2, 3, 21, 21))
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())


def test_cli_train_outputs(patch_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aeutils.cli import main

    run = tmp_path / "cli"
    argv = ["train", str(patch_dir), "--out", str(run), "--epochs", "2", "--batch-size", "4", "--crop", "33",
            "--config", "n_blocks=1", "widths=8,8,4", "--ssim", "0.5", "--l1", "0.5", "--device", "cpu",
            "--workers", "0", "--no-progress", "--val-limit", "4"]
    assert main(argv) == 0
    assert "val PSNR" in capsys.readouterr().out
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(np.isfinite(float(r["val_psnr"])) and -1 <= float(r["val_ssim"]) <= 1 for r in rows)
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"]) * 1.5
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    best = load_checkpoint(run / "best.pt")
    assert best.config == TINY and not best.model.training and best.meta["metrics"]["val_psnr"] > 0
    assert best.meta["train_args"]["loss"] == {"mse": 1.0, "l1": 0.5, "ssim": 0.5}
    # the run folder holds its settings: the same TrainConfig the flags make
    from aeutils.cli import _top_parser  # noqa: F401 - the CLI module is importable
    import argparse

    from aeutils.training import add_cli_arguments, config_from_args, read_run_config

    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    patches, stored = read_run_config(run)
    assert patches == patch_dir and stored == config_from_args(parser.parse_args(argv[1:]))
    assert stored.architecture == TINY and stored.ssim == 0.5 and stored.resume == "auto"
    # the same command again continues the run (here: nothing left to do), exit code 0
    assert main(argv) == 0
    assert "nothing_to_do" in capsys.readouterr().out
    # other settings in the same folder: a one-line error naming them and --resume, exit code 2
    assert main([*argv, "--lr", "0.001"]) == 2
    err = capsys.readouterr().err
    assert "lr 0.002 -> 0.001" in err and "--resume" in err and err.count("\n") == 1
    # not enough data
    assert main(["train", str(patch_dir), "--out", str(tmp_path / "x"), "--batch-size", "10000", "--crop", "33", "--no-progress"]) == 2
    assert "fewer than one batch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, message",
    [(["--crop", "180"], "--crop 180: training crops must be 4k+1 px, at least 5 (nearest: 177, 181)"),
     (["--val-limit", "-1"], "--val-limit -1: must be >= 0 (0: all patches)")],
)
def test_cli_bad_option_is_one_error_line(patch_dir: Path, tmp_path: Path, option: list[str], message: str) -> None:
    """A bad option value: exit code 2 and one 'error:' line, no traceback (a real process, as a user runs it)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "aeutils", "train", str(patch_dir), "--out", str(tmp_path / "run"), "--no-progress",
           "--device", "cpu", *option]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {message}"]
    assert not (tmp_path / "run").exists()


def test_ddp_backend_follows_the_rank_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU device pairs with gloo even on a GPU host; a bare "cuda" under torchrun is cuda:LOCAL_RANK."""
    import aeutils.training.distributed as tr

    seen: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pretend a 2-GPU host
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(tr.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(tr.dist, "init_process_group", lambda backend: seen.append(backend))
    monkeypatch.setattr(tr.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(tr.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.append(str(d)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("MSCOPY_DEVICE", raising=False)
    assert tr.setup_process_group(tr.rank_device("cpu")) == (1, 2, True) and seen == ["gloo"]
    seen.clear()
    dev = tr.rank_device("cuda")
    assert dev == torch.device("cuda", 1)
    tr.setup_process_group(dev)
    assert seen == ["cuda:1", "nccl"]


def test_trainer_learns_and_bf16_step_on_cpu() -> None:
    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(8, 3, 9, 9), size=(33, 33), mode="bilinear")
    tr = Trainer(Autoencoder(TINY), lr=3e-3, device="cpu", total_steps=60, schedule="constant")
    first = float(tr.step(x))
    for _ in range(40):
        last = float(tr.step(x))
    assert last < first * 0.7
    assert tr.evaluate([x])["psnr"] > 10
    bf = Trainer(Autoencoder(TINY), device="cpu", amp=True)
    assert bf.amp_dtype == torch.bfloat16 and np.isfinite(float(bf.step(x)))


def test_loss_terms_pass_gradients_to_the_reconstruction(tmp_path: Path) -> None:
    pred = torch.rand(2, 3, 33, 33, requires_grad=True)
    target = torch.rand(2, 3, 33, 33, requires_grad=True)
    total, parts = ReconstructionLoss(mse=1, l1=0.5, ssim=0.5)(pred, target)
    assert set(parts) == {"mse", "l1", "ssim"}
    total.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    with pytest.raises(TrainingError, match="local VGG19 weights"):
        ReconstructionLoss(vgg=1.0)
    with pytest.raises(TrainingError, match="all loss weights are zero"):
        ReconstructionLoss(mse=0)
    # VGG term from a local weights file (random VGG19 feature weights written here)
    from torchvision.models.vgg import cfgs, make_layers

    weights = tmp_path / "vgg19_features.pth"
    torch.save(make_layers(cfgs["E"]).state_dict(), weights)
    loss = ReconstructionLoss(mse=0, vgg=1.0, vgg_weights=weights)
    p = torch.rand(1, 3, 33, 33, requires_grad=True)
    t = torch.rand(1, 3, 33, 33, requires_grad=True)
    v, parts = loss(p, t)
    v.backward()
    assert set(parts) == {"vgg"} and p.grad is not None and p.grad.abs().sum() > 0
    assert t.grad is None  # the target side is held without gradients


def test_rng_state_round_trips_with_weights_only(tmp_path: Path) -> None:
    import random

    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_parse_config_and_duration(tmp_path: Path) -> None:
    assert parse_config(None) is None
    cfg = parse_config(["n_blocks=2", "widths=32,32,8", "activation=silu"])
    assert cfg == AutoencoderConfig(n_blocks=2, widths=(32, 32, 8), activation="silu")
    assert parse_config(['{"n_blocks": 3}']) == AutoencoderConfig(n_blocks=3)
    (tmp_path / "c.json").write_text('{"widths": [16, 16, 4]}')
    assert parse_config([str(tmp_path / "c.json")]).widths == (16, 16, 4)
    with pytest.raises(TrainingError, match="unknown"):
        parse_config(["depth=3"])
    assert parse_duration("45m") == 2700 and parse_duration("90") == 90 and parse_duration("1.5h") == 5400
    with pytest.raises(TrainingError):
        parse_duration("soon")


def test_shipped_model_loads_offline_in_eval_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    import aeutils
    from aeutils.checkpoint import PRETRAINED

    monkeypatch.delenv("MSCOPY_PRETRAINED", raising=False)
    assert PRETRAINED.is_file() and PRETRAINED.stat().st_size <= 10 * 2**20
    model = aeutils.load_model()
    assert not model.training and model.config.latent_channels == 1
    with torch.no_grad():
        z = model.encode(torch.rand(1, 3, 181, 181))
    assert z.shape == (1, 1, 46, 46)


def test_speed_choice_is_logged_stored_and_reused_on_resume(
    patch_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from aeutils import speed

    run = tmp_path / "speed"
    short = train(patch_dir, tmp_path / "short", epochs=1, **FAST)  # a few steps: the probe cannot pay
    assert load_checkpoint(short.last).meta["train_args"]["speed"]["source"] == "short run"
    assert short.final["speed"] == "fp32"
    capsys.readouterr()
    monkeypatch.setenv(speed.ENV, "probe")  # probe although this run is far too short to pay for it
    first = train(patch_dir, run, epochs=2, max_steps=short.global_step, **FAST)
    assert first.epochs_done == 1
    stored = load_checkpoint(first.last).meta["train_args"]["speed"]
    assert stored["source"] == "probe" and set(stored["rates"]) == set(speed.CANDIDATES)
    assert stored["name"] == speed.decide(stored["rates"])
    out = capsys.readouterr().out
    assert out.count("aeutils speed (training):") == 1 and f"{stored['name']} [probe]" in out

    def no_probe(*a, **k):
        raise AssertionError("--resume must not probe again")

    monkeypatch.setattr(speed, "measure", no_probe)
    resumed = train(patch_dir, run, epochs=2, resume=True, **FAST)
    again = load_checkpoint(resumed.last).meta["train_args"]["speed"]
    assert (again["name"], again["source"], again["rates"]) == (stored["name"], "resumed", stored["rates"])
    with open(run / "log.csv") as f:
        assert [r["speed"] for r in csv.DictReader(f)] == [stored["name"]] * 2
    # an option forced against the stored choice wins (and, with one candidate left, needs no probe)
    flip = not speed.Choice(stored["name"]).amp
    forced = train(patch_dir, run, epochs=3, resume=True, amp=flip, channels_last=False, **FAST)
    assert forced.final["speed"] == ("bf16" if flip else "fp32")


def test_train_config_validates_round_trips_and_names_runs(tmp_path: Path) -> None:
    from aeutils.training import TrainConfig

    cfg = TrainConfig(epochs=3, architecture=TINY, time_budget="15m", vgg_weights=None)
    assert cfg.time_budget == 900.0
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    import json

    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # through JSON, as config.json
    assert cfg.run_name() == TrainConfig(epochs=3, architecture=TINY).run_name()  # a stop is not the recipe
    assert cfg.run_name() != cfg.replace(epochs=4).run_name()
    assert cfg.run_name() != cfg.replace(architecture=AutoencoderConfig(n_blocks=2, widths=(8, 8, 4))).run_name()
    assert TrainConfig().run_name() == TrainConfig(architecture=AutoencoderConfig()).run_name()
    for kwargs, message in (
        (dict(crop=180), "--crop 180: training crops must be 4k+1 px, at least 5 (nearest: 177, 181)"),
        (dict(lr=0.0), "--lr 0: must be > 0"),
        (dict(epochs="3"), "--epochs '3': expected an integer"),
        (dict(schedule="step"), "--schedule 'step': must be 'cosine' or 'constant'"),
        (dict(resume="yes"), "resume 'yes': must be True, False or 'auto'"),
    ):
        with pytest.raises(TrainingError) as info:
            TrainConfig(**kwargs)
        assert str(info.value) == message
    with pytest.raises(TrainingError, match="unknown training settings"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(TypeError, match="unexpected keyword"):
        train(tmp_path, tmp_path / "run", epoch=3)


def test_train_takes_a_config_object_and_keywords_alike(patch_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aeutils.training import TrainConfig, TrainEvent

    cfg = TrainConfig(epochs=5, batch_size=4, crop=33, architecture=TINY, device="cpu", workers=0, progress=False,
                      val_limit=8, lr=3e-3, print_every=4)
    events: list[tuple[str, int]] = []

    def record(ev: TrainEvent) -> None:
        events.append((ev.kind, ev.epoch))

    a = train(patch_dir, tmp_path / "a", cfg, callbacks=[record])
    assert events == [("epoch", e) for e in range(1, 6)] + [("end", 5)]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/5", "epoch 4/5", "epoch 5/5"]  # the rest is in log.csv
    assert len(a.history) == 5
    b = train(patch_dir, tmp_path / "b", epochs=5, **{**FAST, "print_every": 4})  # the keyword form
    wa, wb = _weights(a.last), _weights(b.last)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_auto_resume_continues_a_compatible_run_and_refuses_another(patch_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "auto"
    first = train(patch_dir, run, epochs=2, max_steps=2, resume="auto", **FAST)  # stopped inside epoch 1 (3 steps)
    assert (first.epochs_done, first.epoch_steps, first.history) == (0, 2, [])  # an unfinished epoch is not one
    again = train(patch_dir, run, epochs=2, max_steps=None, resume="auto", **FAST)  # a stop is not the recipe
    assert again.epochs_done == 2 and [r["epoch"] for r in again.history] == [1, 2]
    assert again.global_step == 2 * again.steps_per_epoch
    with pytest.raises(TrainingError, match=r"other settings \(epochs 2 -> 3\); pass --resume \(resume=True\)"):
        train(patch_dir, run, epochs=3, resume="auto", **FAST)
    from aeutils.training import find_runs

    assert find_runs(tmp_path) == [run]
    train(patch_dir, tmp_path / "short", epochs=3, max_steps=again.steps_per_epoch, **FAST)  # unfinished: not picked up
    assert find_runs(tmp_path) == [run] and set(find_runs(tmp_path, finished=False)) == {run, tmp_path / "short"}
    from aeutils.checkpoint import CheckpointError, pretrained_path, save_checkpoint
    from aeutils.training import pick_checkpoint

    black = Autoencoder(TINY)
    with torch.no_grad():
        black.decoder[-1].bias.fill_(-100.0)  # every output pixel black: far worse than the run on validation
    bad = save_checkpoint(tmp_path / "black.pt", black)
    path, line = pick_checkpoint(runs_dir=tmp_path, reference=bad)
    assert path == run / "best.pt" and line.startswith(f"model: notebook 03's run {run / 'best.pt'} (val PSNR"), line
    path, line = pick_checkpoint(runs_dir=tmp_path / "none")  # notebooks 04/05 before notebook 03 ran
    assert path == pretrained_path() and line.endswith(f"(no finished run under {tmp_path / 'none'})")
    assert pick_checkpoint(run / "last.pt", tmp_path)[0] == run / "last.pt"  # given wins
    with pytest.raises(CheckpointError, match="gone.pt: no such checkpoint file"):
        pick_checkpoint(tmp_path / "gone.pt")
    assert train(patch_dir, run, epochs=3, resume=True, **FAST).epochs_done == 3  # explicitly: more epochs


def test_ctrl_c_message_and_rerunning_the_same_command_agree(
    patch_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C says "rerun the same command to resume"; doing exactly that continues the run and ends
    where an uninterrupted run ends, bit for bit."""
    from aeutils.cli import main

    straight = train(patch_dir, tmp_path / "straight", epochs=2, **FAST)
    run = tmp_path / "ctrlc"
    argv = ["train", str(patch_dir), "--out", str(run), "--epochs", "2", "--batch-size", "4", "--crop", "33",
            "--config", "n_blocks=1", "widths=8,8,4", "--device", "cpu", "--workers", "0", "--no-progress",
            "--val-limit", "8", "--lr", "3e-3"]
    original = Trainer.step

    def interrupted(self, batch):  # type: ignore[no-untyped-def]
        if self.global_step == straight.global_step // 2 + 1:  # inside epoch 2
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "step", interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "rerun the same command to resume" in err
    assert load_checkpoint(run / "last.pt").meta["epoch"] == 1
    monkeypatch.setattr(Trainer, "step", original)
    assert main(argv) == 0  # the same command, as the message says
    with open(run / "log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    wa, wb = _weights(straight.last), _weights(run / "last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_corrupt_validation_patch_is_found_before_the_first_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aeutils.data import PatchDataset
    from aeutils.errors import PatchError

    patches = write_patches(tmp_path / "patches")
    bad = PatchDataset(patches, "val", augment=False).records[-1].path
    data = bytearray(bad.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8  # a damaged IDAT chunk (right size, bad CRC)
    bad.write_bytes(bytes(data))
    steps = {"n": 0}
    original = Trainer.step

    def counted(self, batch):  # type: ignore[no-untyped-def]
        steps["n"] += 1
        return original(self, batch)

    monkeypatch.setattr(Trainer, "step", counted)
    with pytest.raises(PatchError, match=rf"{bad.name}: corrupt or unreadable image"):
        train(patches, tmp_path / "run", epochs=1, **{**FAST, "val_limit": None})
    assert steps["n"] == 0 and not (tmp_path / "run" / "last.pt").exists()
    # a corrupt training patch: the same, before any step
    PatchDataset(patches, "val", augment=False).records[-1].path.write_bytes(bytes(bytearray(original_png(patches))))
    tr = PatchDataset(patches, "train").records[0].path
    tr.write_bytes(tr.read_bytes()[:-40])  # truncated
    with pytest.raises(PatchError, match=rf"{tr.name}: corrupt or unreadable image"):
        train(patches, tmp_path / "run", epochs=1, **{**FAST, "val_limit": None})
    assert steps["n"] == 0


def original_png(patches: Path) -> bytes:
    """A good PNG of the same size (another patch's bytes)."""
    from aeutils.data import PatchDataset

    return PatchDataset(patches, "val", augment=False).records[0].path.read_bytes()


def test_bad_config_value_names_the_key_and_type() -> None:
    with pytest.raises(TrainingError) as info:
        parse_config(["n_blocks=abc"])
    assert str(info.value) == "--config: n_blocks='abc': expected an integer"
    with pytest.raises(TrainingError, match=r"widths=\[8, 8\]: expected 3 comma-separated integers"):
        parse_config(["widths=8,8"])
    with pytest.raises(TrainingError, match=r"stage_activation='maybe': expected true or false"):
        parse_config(["stage_activation=maybe"])


def test_header_only_manifest_says_no_patches_are_listed(patch_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    header = (patch_dir / "manifest.csv").read_text().splitlines()[0]
    (empty / "manifest.csv").write_text(header + "\n")
    with pytest.raises(TrainingError) as info:
        train(empty, tmp_path / "run", epochs=1, **FAST)
    assert str(info.value).startswith(f"no patches listed in {empty / 'manifest.csv'}")
    assert not (tmp_path / "run").exists()


def test_a_long_run_prints_about_twenty_epoch_lines() -> None:
    """Notebook 03 at its full settings (130 epochs) prints 20 epoch lines, not 130, so its training cell
    stays under 40 lines; a resumed call prints its first epoch, a stopped one its last, then every Nth."""
    from aeutils.training.logs import epoch_printed

    shown = [e for e in range(1, 131) if epoch_printed(e, 130)]
    assert shown[:3] == [1, 7, 14] and shown[-2:] == [126, 130] and len(shown) == 20
    resumed = [e for e in range(61, 131) if epoch_printed(e, 130, start_epoch=60)]
    assert resumed[:2] == [61, 63] and len(resumed) == 12
    assert epoch_printed(5, 130, stopped=True) and not epoch_printed(5, 130)
    assert [e for e in range(1, 6) if epoch_printed(e, 5, print_every=4)] == [1, 4, 5]


def test_val_limit_zero_means_all_patches(patch_dir: Path, tmp_path: Path) -> None:
    """``val_limit=0`` is "all patches" in Python as on the CLI (``--val-limit 0``), not an empty validation set."""
    import argparse

    from aeutils.data import PatchDataset
    from aeutils.training import TrainConfig, add_cli_arguments, config_from_args

    assert TrainConfig(val_limit=0).val_limit is None
    assert TrainConfig(val_limit=0).run_name() == TrainConfig(val_limit=None).run_name()
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    assert config_from_args(parser.parse_args(["p", "--out", "o", "--val-limit", "0"])).val_limit is None
    n_val = len(PatchDataset(patch_dir, "val", augment=False))
    assert n_val > 0
    result = train(patch_dir, tmp_path / "all", epochs=1, **{**FAST, "val_limit": 0})
    assert np.isfinite(result.final["val_psnr"])  # validated (best.pt chosen by validation PSNR)
    assert load_checkpoint(result.last).meta["train_args"]["n_val"] == n_val


def test_auto_resume_refuses_a_run_without_config_json(patch_dir: Path, tmp_path: Path) -> None:
    """A folder with ``last.pt`` but no ``config.json``: nothing to compare with, so "auto" does not
    continue it under whatever settings; the error names the folder and ``--resume (resume=True)``."""
    run = tmp_path / "old"
    train(patch_dir, run, epochs=1, **FAST)
    (run / "config.json").unlink()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    with pytest.raises(TrainingError) as info:
        train(patch_dir, run, epochs=2, resume="auto", **FAST)
    assert str(info.value) == (
        f"{run}: holds a run without config.json; pass --resume (resume=True) to continue it, or choose another --out"
    )
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before
    with pytest.raises(TrainingError, match=r"already holds a run \(last.pt\); pass --resume \(resume=True\)"):
        train(patch_dir, run, epochs=2, **FAST)
    assert train(patch_dir, run, epochs=2, resume=True, **FAST).epochs_done == 2  # as the message says


def test_cli_defaults_are_train_config_defaults() -> None:
    """Every option's default comes from TrainConfig (no second copy to drift); each knob has its option."""
    import argparse
    from dataclasses import fields

    from aeutils.training import TrainConfig, add_cli_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    assert config_from_args(parser.parse_args(["p", "--out", "o"])) == TrainConfig(resume="auto")
    dests = {a.dest: a.default for a in parser._actions}
    tri = {"auto": None, "on": True, "off": False}
    for f in fields(TrainConfig):
        if f.name in ("architecture", "resume", "verbose"):  # --config; --resume (auto without it); not a flag
            continue
        assert f.name in dests, f"no option for TrainConfig.{f.name}"
        default = tri[dests[f.name]] if f.name in ("channels_last", "amp") else dests[f.name]
        assert default == f.default, f.name
    args = parser.parse_args(["p", "--out", "o", "--log-every", "3", "--print-every", "2"])
    assert (config_from_args(args).log_every, config_from_args(args).print_every) == (3, 2)


def test_a_finished_run_returns_at_once_and_touches_nothing(
    patch_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rerunning a finished run (same recipe, epochs reached) gives its result without checking the
    patches, rewriting config.json or opening a new TensorBoard event file: no file in the folder changes."""
    import time

    import aeutils.training.loop as loop
    from aeutils.training import TrainEvent

    run = tmp_path / "done"
    first = train(patch_dir, run, epochs=2, resume="auto", **FAST)

    def snapshot() -> list[tuple[str, int, int]]:
        return sorted((str(p.relative_to(run)), p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*"))

    before = snapshot()
    time.sleep(0.05)  # a rewrite now would show as a later mtime

    def no_data(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("a finished run must not read the patches")

    monkeypatch.setattr(loop, "run_data", no_data)
    events: list[TrainEvent] = []
    for resume in ("auto", True):
        again = train(patch_dir, run, epochs=2, resume=resume, time_budget="5m", callbacks=[events.append], **FAST)
        assert (again.stopped, again.epochs_done, again.global_step) == ("nothing_to_do", 2, first.global_step)
        assert again.best_psnr == first.best_psnr and [r["epoch"] for r in again.history] == [1, 2]
        assert again.final["val_psnr"] == pytest.approx(first.final["val_psnr"], rel=1e-5)
    assert snapshot() == before
    assert [(e.kind, e.epoch) for e in events] == [("end", 2)] * 2
    assert events[0].trainer.global_step == first.global_step
    w = _weights(run / "last.pt")
    assert all(torch.equal(w[k], v) for k, v in events[0].trainer.module.state_dict().items())
    # more epochs is another recipe: it does train (and reads the patches)
    with pytest.raises(AssertionError, match="must not read the patches"):
        train(patch_dir, run, epochs=3, resume=True, **FAST)


# --------------------------------------------------------------------------------------------- issue 20
def test_20_3_a_second_train_into_a_busy_run_folder_is_refused(patch_dir: Path, tmp_path: Path) -> None:
    """One writer per run folder: the second process gets one line naming the folder and the first one's pid."""
    from aeutils.errors import FolderBusyError
    from test_io import hold_lock, release

    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        with pytest.raises(FolderBusyError) as info:
            train(patch_dir, run, epochs=1, **FAST)
    finally:
        release(holder)
    assert str(info.value).startswith(f"{run}: in use by another process (pid {holder.pid}")
    assert not run.exists()  # nothing written, the folder the lock made removed again


def test_20_14_temp_files_of_killed_checkpoint_writes_are_removed_by_the_rerun(patch_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(patch_dir, run, epochs=1, **FAST)
    left = [run / ".last.pt.k2j4h6g8.tmp", run / ".best.pt.a1b2c3d4.tmp"]
    for p in left:
        p.write_bytes(b"half a checkpoint")
    (run / "mine.tmp").write_text("not ours")
    assert train(patch_dir, run, epochs=2, resume=True, **FAST).epochs_done == 2
    assert not any(p.exists() for p in left) and (run / "mine.tmp").exists()
    assert not (run / ".aeutils.lock").exists()


@pytest.mark.parametrize(
    "key, value, message",
    [("epochs", "three", 'key "epochs" is "three": expected an integer'),
     ("lr", -1, 'key "lr" is -1: must be > 0'),
     ("progress", "yes", 'key "progress" is "yes": expected true or false'),
     ("time_budget", "soon", 'key "time_budget" is "soon": expected seconds or a number with s, m or h'),
     ("architecture", {"n_blocks": "x"}, "architecture: n_blocks='x': expected an integer")],
)
def test_20_12_a_hand_edited_config_json_names_the_file_and_key(
    patch_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: object, message: str
) -> None:
    """A wrong value in config.json (edited by hand) is reported with the file and its key, not as a
    CLI option the user never gave (was: "--epochs 'three': expected an integer")."""
    import json

    from aeutils.cli import main

    run = tmp_path / "run"
    argv = ["train", str(patch_dir), "--out", str(run), "--epochs", "1", "--batch-size", "4", "--crop", "33",
            "--config", "n_blocks=1", "widths=8,8,4", "--device", "cpu", "--workers", "0", "--no-progress",
            "--val-limit", "4", "--max-steps", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    data = json.loads((run / "config.json").read_text())
    data[key] = value
    (run / "config.json").write_text(json.dumps(data))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {run / 'config.json'}: {message}"]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing rewritten


def test_20_2_a_budget_stop_inside_an_epoch_resumes_there_and_ends_as_an_uninterrupted_run(
    patch_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--time-budget stops inside an epoch do not count it as finished (was: "3 epochs" after 59 steps
    instead of 87): last.pt keeps the position (steps into the epoch, RNG states), and rerunning the same
    command, one step per call here (a budget of 1 us stops after each call's first step, so every
    position inside and at the end of an epoch is a stop), ends with the uninterrupted run's step count,
    bit-identical weights and log.csv rows; the run is marked finished only at the end."""
    from aeutils.checkpoint import data_digest
    from aeutils.cli import main
    from aeutils.training import find_runs
    from aeutils.training.logs import read_log

    straight = train(patch_dir, tmp_path / "straight", epochs=2, **FAST)
    per_epoch = straight.steps_per_epoch
    assert per_epoch >= 3 and straight.global_step == 2 * per_epoch
    run = tmp_path / "runs" / "budget"
    argv = ["train", str(patch_dir), "--out", str(run), "--epochs", "2", "--batch-size", "4", "--crop", "33",
            "--config", "n_blocks=1", "widths=8,8,4", "--device", "cpu", "--workers", "0", "--no-progress",
            "--val-limit", "8", "--lr", "3e-3", "--time-budget", "0.000001"]
    for step in range(1, 2 * per_epoch + 1):
        assert main(argv) == 0
        out = capsys.readouterr().out.strip().splitlines()[-1]
        ck = load_checkpoint(run / "last.pt")
        ts = ck.train_state
        assert ts["global_step"] == step
        epochs, into = divmod(step, per_epoch)
        assert ts["epoch"] == ck.meta["epoch"] == epochs  # only whole epochs count
        logged = read_log(run / "log.csv", 10**9)
        assert [r["epoch"] for r in logged] == list(range(1, epochs + 1))  # a row per finished epoch, none for a partial one
        if into:
            assert ts["in_epoch"]["steps"] == into
            assert out.startswith(f"stopped (time_budget) in epoch {epochs + 1} after {into} of its {per_epoch} steps")
            assert "rerun the same command to continue" in out
        else:
            assert "in_epoch" not in ts and out.startswith(f"done (time_budget): {epochs} epochs, {step} steps")
        assert find_runs(run.parent) == ([run] if step == 2 * per_epoch else [])  # finished only at the end
    assert main(argv) == 0 and "done (nothing_to_do)" in capsys.readouterr().out
    wa, wb = _weights(straight.last), _weights(run / "last.pt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # the whole training state too (optimiser moments, schedule, RNG states), not only the weights
    ta, tb = load_checkpoint(straight.last).train_state, load_checkpoint(run / "last.pt").train_state
    assert data_digest(ta) == data_digest(tb)
    timing = {"train_seconds", "images_per_s", "val_seconds"}
    with open(straight.out_dir / "log.csv") as fa, open(run / "log.csv") as fb:
        ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert [{k: v for k, v in r.items() if k not in timing} for r in ra] == \
        [{k: v for k, v in r.items() if k not in timing} for r in rb]


def test_20_2_a_tampered_in_epoch_position_is_caught_by_the_checkpoint_digest(patch_dir: Path, tmp_path: Path) -> None:
    """The position inside an epoch is part of last.pt's training state, so its sha256 covers it: a
    changed step count is refused instead of silently replaying other batches."""
    from aeutils.checkpoint import CheckpointError

    run = tmp_path / "run"
    train(patch_dir, run, epochs=2, max_steps=2, **FAST)
    before = (run / "last.pt").read_bytes()
    again = train(patch_dir, run, epochs=2, max_steps=2, resume=True, **FAST)  # the stop already reached
    assert (again.stopped, again.global_step, again.epoch_steps) == ("max_steps", 2, 2)  # not one step more
    assert (run / "last.pt").read_bytes() == before
    payload = torch.load(run / "last.pt", weights_only=True)
    assert payload["train_state"]["in_epoch"]["steps"] == 2
    payload["train_state"]["in_epoch"]["steps"] = 1
    torch.save(payload, run / "last.pt")
    with pytest.raises(CheckpointError, match="training state .* do not match their stored sha256 digest"):
        train(patch_dir, run, epochs=2, resume=True, **FAST)


def test_20_2_a_stop_inside_an_epoch_with_loader_workers_resumes_exactly(patch_dir: Path, tmp_path: Path) -> None:
    """With DataLoader workers (each seeded per epoch, augmenting in its own process) the continuation
    loads and drops the batches already trained on, so every worker's RNG is where it would be: the
    same weights as an uninterrupted run with the same workers."""
    fast = {**FAST, "workers": 2, "verbose": False}
    straight = train(patch_dir, tmp_path / "straight", epochs=2, **fast)
    calls = 0
    while True:
        result = train(patch_dir, tmp_path / "budget", epochs=2, time_budget=1e-6, resume="auto", **fast)
        if result.stopped == "nothing_to_do":
            break
        calls += 1
        assert result.global_step == calls  # one step per call: stops inside and at the end of each epoch
    assert calls == straight.global_step
    wa, wb = _weights(straight.last), _weights(tmp_path / "budget" / "last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_20_10_a_full_disk_is_one_error_line_without_a_tensorboard_thread_traceback(
    patch_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The disk fills during epoch 2 (simulated: TensorBoard's record writes, which run in its writer
    thread, and the atomic writes of log.csv / last.pt raise OSError(ENOSPC)): `train` ends with exactly
    one error line (was: that line plus a writer-thread traceback), exit 2, and epoch 1's last.pt is kept."""
    import errno
    import threading

    import aeutils.checkpoint
    import aeutils.io
    from tensorboard.summary.writer import record_writer

    from aeutils.cli import main

    full = {"now": False}

    def no_space(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    def guarded(original):  # type: ignore[no-untyped-def]
        def write(*args, **kwargs):  # type: ignore[no-untyped-def]
            return no_space() if full["now"] else original(*args, **kwargs)
        return write

    monkeypatch.setattr(record_writer.RecordWriter, "write", guarded(record_writer.RecordWriter.write))
    monkeypatch.setattr(aeutils.io, "atomic_write_bytes", guarded(aeutils.io.atomic_write_bytes))
    monkeypatch.setattr(aeutils.checkpoint, "atomic_write_bytes", guarded(aeutils.checkpoint.atomic_write_bytes))
    original_step = Trainer.step

    def step(self, batch):  # type: ignore[no-untyped-def]
        full["now"] = full["now"] or self.global_step == 3  # epoch 2 of 3-step epochs
        return original_step(self, batch)

    monkeypatch.setattr(Trainer, "step", step)
    thread_errors: list[BaseException] = []  # what reaches the process's thread exception hook (prints a traceback)
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_errors.append(args.exc_value))
    run = tmp_path / "run"
    argv = ["train", str(patch_dir), "--out", str(run), "--epochs", "3", "--batch-size", "4", "--crop", "33",
            "--config", "n_blocks=1", "widths=8,8,4", "--device", "cpu", "--workers", "0", "--no-progress",
            "--val-limit", "4", "--log-every", "1"]
    assert main(argv) == 2
    for thread in threading.enumerate():  # the writer thread has died; let its exception hook finish printing
        if type(thread).__name__ == "_AsyncWriterThread":
            thread.join(10)
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {run / 'tensorboard'}: No space left on device"], err
    assert thread_errors == []
    assert load_checkpoint(run / "last.pt").meta["epoch"] == 1  # the last good checkpoint is kept
    # full from the start of a call: the TensorBoard writer cannot even be opened, and the same holds
    full["now"] = True
    assert main(["train", str(patch_dir), *argv[2:3], str(tmp_path / "other"), *argv[4:]]) == 2
    for thread in threading.enumerate():
        if type(thread).__name__ == "_AsyncWriterThread":
            thread.join(10)
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "No space left on device" in err, err
    assert thread_errors == []


def _fake_run(root: Path, patches: Path, val_psnr: float) -> Path:
    """A finished run folder whose ``best.pt`` records ``val_psnr`` (what the trainer writes), without training."""
    from aeutils.checkpoint import save_checkpoint
    from aeutils.training import BEST_NAME, LAST_NAME, TrainConfig, write_run_config

    cfg = TrainConfig(epochs=1, architecture=TINY, val_limit=2)  # 2 of the 3 validation patches
    root.mkdir(parents=True)
    write_run_config(root, patches, cfg)
    model = Autoencoder(TINY)
    metrics = {"val_psnr": val_psnr}
    save_checkpoint(root / BEST_NAME, model, epoch=1, metrics=metrics)
    save_checkpoint(root / LAST_NAME, model, epoch=1, metrics=metrics)
    return root


def test_pick_checkpoint_uses_notebook_03s_run_only_when_it_is_not_worse_than_the_shipped_model(
    patch_dir: Path, tmp_path: Path
) -> None:
    from aeutils.checkpoint import pretrained_path
    from aeutils.training import pick_checkpoint, validation_psnr

    shipped, n = validation_psnr(pretrained_path(), _fake_run(tmp_path / "probe", patch_dir, 0.0))
    assert n == 2 and 5 < shipped < 60  # the run's val_limit subset; a real reconstruction PSNR
    runs = tmp_path / "runs"
    flat = _fake_run(runs / "flat", patch_dir, shipped - 0.5)  # a smoke-sized run: worse on validation
    path, line = pick_checkpoint(None, runs)
    assert path == pretrained_path(), line
    assert f"{shipped:.2f} dB" in line and f"{shipped - 0.5:.2f} dB, so it is not used" in line
    good = _fake_run(runs / "good", patch_dir, shipped)  # newer, and a tie: the run is kept
    assert pick_checkpoint(None, runs)[0] == good / "best.pt"
    import shutil

    shutil.rmtree(good)
    moved = tmp_path / "moved"  # the run's patches are gone: no comparison, the shipped model, said why
    shutil.copytree(patch_dir, moved)
    gone = _fake_run(runs / "gone", moved, 99.0)
    shutil.rmtree(moved)
    path, line = pick_checkpoint(None, runs)
    assert path == pretrained_path() and f"run {gone.name} could not be compared" in line and "is gone" in line
    assert flat.exists()
