"""aeutils.checkpoint: one safe, atomic format. Round trips are exact; every bad file (missing,
empty, truncated, corrupt, foreign, wrong architecture, pickle payload) gives a CheckpointError
naming it, and a pickle payload is never executed."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import aeutils
from aeutils.checkpoint import (
    FORMAT,
    load_checkpoint,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from aeutils.errors import CheckpointError
from aeutils.model import Autoencoder, AutoencoderConfig

SMALL = AutoencoderConfig(widths=(8, 4, 2), n_blocks=1)  # the format does not care about size


def trained_ish(config: AutoencoderConfig = SMALL, seed: int = 0) -> Autoencoder:
    """A small model with non-default BatchNorm statistics (so buffers must round-trip too)."""
    torch.manual_seed(seed)
    model = Autoencoder(config).train()
    with torch.no_grad():
        model(torch.rand(4, 3, 17, 17))
    return model.eval()


def x17(seed: int = 1) -> torch.Tensor:
    return torch.rand(2, 3, 17, 17, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "good.pt", trained_ish(), epoch=3, metrics={"psnr": 31.5})


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = trained_ish()
    path = save_checkpoint(tmp_path / "sub" / "ae.pt", model)
    loaded = load_model(path)
    assert loaded.config == model.config and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x17()), model(x17()))
        assert torch.equal(loaded.encode(x17()), model.encode(x17()))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_round_trip_keeps_a_non_default_config_and_normalisation(tmp_path: Path) -> None:
    config = AutoencoderConfig(widths=(6, 4, 2), n_blocks=1, activation="gelu", stage_activation=False, mean=(0.8, 0.6, 0.7), std=(0.1, 0.2, 0.15))
    model = trained_ish(config)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "ae.pt", model))
    assert ckpt.config == config
    assert ckpt.meta["normalisation"] == {"mean": [0.8, 0.6, 0.7], "std": [0.1, 0.2, 0.15]}
    with torch.no_grad():
        assert torch.equal(ckpt.model(x17()), model(x17()))


def test_meta_and_train_state_survive(tmp_path: Path) -> None:
    model = trained_ish()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    model(x17()).mean().backward()
    opt.step()
    path = save_checkpoint(
        tmp_path / "ae.pt",
        model,
        meta={"run": "unit", "slides": [Path("a.svs")], "n": np.int64(7)},
        train_state={"optimizer": opt.state_dict(), "rng": torch.get_rng_state()},
        epoch=12,
        metrics={"psnr": np.float64(30.25), "ssim": 0.9},
    )
    ckpt = load_checkpoint(path)
    meta = ckpt.meta
    assert meta["epoch"] == 12 and meta["metrics"] == {"psnr": 30.25, "ssim": 0.9}
    assert type(meta["metrics"]["psnr"]) is float and meta["n"] == 7 and meta["slides"] == ["a.svs"]
    assert meta["run"] == "unit"
    assert meta["normalisation"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["aeutils"] == aeutils.__version__
    assert {"numpy", "python", "torchvision"} <= set(meta["versions"]) and meta["created"].endswith("+00:00")
    opt2 = torch.optim.Adam(ckpt.model.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt.train_state["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == 1
    assert isinstance(ckpt.train_state["rng"], torch.Tensor)
    assert ckpt.path == path
    # a model-only checkpoint has no train state
    assert load_checkpoint(save_checkpoint(tmp_path / "m.pt", model)).train_state == {}


def test_meta_that_could_not_be_loaded_is_refused_before_writing(tmp_path: Path) -> None:
    class Opaque:
        pass

    target = tmp_path / "ae.pt"
    with pytest.raises(TypeError, match=r"meta\['bad'\]\[0\].*Opaque"):
        save_checkpoint(target, trained_ish(), meta={"bad": [Opaque()]})
    assert list(tmp_path.iterdir()) == []


def test_wrapped_models_are_saved_as_the_autoencoder(tmp_path: Path) -> None:
    class Wrapper(torch.nn.Module):  # like DistributedDataParallel: the model is .module
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    model = trained_ish()
    loaded = load_model(save_checkpoint(tmp_path / "ae.pt", Wrapper(model)))
    with torch.no_grad():
        assert torch.equal(loaded(x17()), model(x17()))
    with pytest.raises(TypeError, match="Autoencoder"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2))


# --- every bad file gives a CheckpointError naming it ---------------------------------------------


def expect_error(path: Path, match: str) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    return info.value


def test_missing_empty_and_directory(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.pt", "no such checkpoint file")
    (tmp_path / "empty.pt").write_bytes(b"")
    expect_error(tmp_path / "empty.pt", "empty")
    (tmp_path / "dir.pt").mkdir()
    expect_error(tmp_path / "dir.pt", "not a file")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated(good: Path, tmp_path: Path, keep: float) -> None:
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * keep)])
    expect_error(cut, "truncated")


def test_corrupt_weights_are_caught_by_the_digest(good: Path, tmp_path: Path) -> None:
    # flip bytes inside the largest tensor: torch.load itself would not notice
    with zipfile.ZipFile(good) as zf:
        big = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        tensor_bytes = zf.read(big)
    data = bytearray(good.read_bytes())
    start = data.find(tensor_bytes) + len(tensor_bytes) // 2
    data[start : start + 16] = bytes(b ^ 0xFF for b in data[start : start + 16])
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    expect_error(bad, "corrupt.*digest")


def test_corrupt_structure(good: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(good) as zf:
        pkl = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
    data = bytearray(good.read_bytes())
    start = pkl.header_offset + 80  # inside the pickled structure
    data[start : start + 200] = bytes(b ^ 0x5A for b in data[start : start + 200])
    bad = tmp_path / "scrambled.pt"
    bad.write_bytes(bytes(data))
    expect_error(bad, "corrupt|refused|not an mscopy-AE")


@pytest.mark.parametrize(
    "content",
    [
        b"hello, not a checkpoint\n",
        "state_dict",
        "tensor",
        "other_format",
    ],
)
def test_foreign_files(tmp_path: Path, content: object) -> None:
    path = tmp_path / "foreign.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
        expect_error(path, "not a PyTorch checkpoint")
        return
    obj = {
        "state_dict": trained_ish().state_dict(),
        "tensor": torch.zeros(3),
        "other_format": {"format": "something/2", "config": {}, "model": {}},
    }[content]
    torch.save(obj, path)
    expect_error(path, "not an mscopy-AE checkpoint")


def payload(config: AutoencoderConfig, state: dict, **extra: object) -> dict:
    return {"format": FORMAT, "config": config.to_dict(), "model": state, "meta": {}, **extra}


def test_weights_of_another_architecture_than_the_config(tmp_path: Path) -> None:
    path = tmp_path / "mismatch.pt"
    torch.save(payload(SMALL, trained_ish(AutoencoderConfig(widths=(8, 4, 2), n_blocks=2)).state_dict()), path)
    expect_error(path, "another architecture.*unexpected tensors")
    torch.save(payload(SMALL, trained_ish(AutoencoderConfig(n_blocks=1, widths=(8, 4, 3))).state_dict()), path)
    expect_error(path, "another architecture.*shape mismatches")
    bad_config = {**SMALL.to_dict(), "depth": 3}
    torch.save({"format": FORMAT, "config": bad_config, "model": {}}, path)
    expect_error(path, "not an AutoencoderConfig.*depth")


def test_a_checkpoint_of_another_config_where_one_is_expected(good: Path) -> None:
    assert load_checkpoint(good, config=SMALL).config == SMALL
    with pytest.raises(CheckpointError, match=r"another architecture: n_blocks 1 \(expected 10\)") as info:
        load_model(good, config=AutoencoderConfig(widths=(8, 4, 2)))
    assert str(good) in str(info.value)


class _Payload:
    """Unpickling this creates ``marker`` (via builtins.open): stands in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (open, (str(self.marker), "w"))


def test_a_pickle_payload_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.pt"
    model = trained_ish()
    torch.save(payload(SMALL, model.state_dict(), meta={"note": _Payload(marker)}), path)
    err = expect_error(path, "refused: the file holds pickled Python objects")
    assert "nothing was executed" in str(err)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


# --- atomic writes -------------------------------------------------------------------------------


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ae.pt", trained_ish())
    save_checkpoint(tmp_path / "ae.pt", trained_ish(seed=1))  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae.pt"]


def test_an_interrupted_write_keeps_the_previous_checkpoint(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    before = good.read_bytes()
    real_write = os.write

    def dies_halfway(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[:1000]))  # part of the file written, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", dies_halfway)  # the checkpoint's bytes go out through os.write
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(good, trained_ish(seed=5), epoch=4)
    monkeypatch.undo()
    assert good.read_bytes() == before
    assert sorted(p.name for p in good.parent.iterdir()) == [good.name]
    assert load_checkpoint(good).meta["epoch"] == 3


# --- the shipped model ---------------------------------------------------------------------------


def test_load_model_without_a_source_is_the_shipped_model_and_follows_the_environment(
    good: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSCOPY_PRETRAINED", str(good))
    model = load_model()
    assert isinstance(model, Autoencoder) and not model.training
    via_package = aeutils.load_model()
    with torch.no_grad():
        assert torch.equal(model(x17()), load_model(good)(x17()))
        assert torch.equal(via_package(x17()), model(x17()))


def test_load_model_missing_shipped_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "gone.pt"
    monkeypatch.setenv("MSCOPY_PRETRAINED", str(missing))
    with pytest.raises(CheckpointError, match=r"MSCOPY_PRETRAINED points to a missing file") as info:
        load_model()
    assert str(missing) in str(info.value)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        aeutils.load_model()


def test_load_model_passes_models_through_and_loads_paths_or_the_shipped_model(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = trained_ish().train()
    assert load_model(model) is model and model.training  # as given: not copied, mode untouched
    with pytest.raises(CheckpointError, match="another architecture"):
        load_model(model, config=AutoencoderConfig())
    with torch.no_grad():
        for path in (good, str(good)):
            loaded = load_model(path)
            assert isinstance(loaded, Autoencoder) and not loaded.training
            assert torch.equal(loaded(x17()), load_checkpoint(good).model(x17()))
        monkeypatch.setenv("MSCOPY_PRETRAINED", str(good))
        assert torch.equal(load_model()(x17()), load_model(good)(x17()))
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_model(tmp_path / "gone.pt")
    with pytest.raises(TypeError, match="checkpoint path"):
        load_model(42)  # type: ignore[arg-type]


def test_load_pretrained_and_as_model_are_deprecated_names_of_load_model(
    good: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One "get me a model" entry: the old helpers still work, warn, and give what load_model gives."""
    from aeutils.checkpoint import as_model, load_pretrained

    monkeypatch.setenv("MSCOPY_PRETRAINED", str(good))
    model = trained_ish()
    with torch.no_grad():
        expected = load_model()(x17())
        for call in (load_pretrained, aeutils.load_pretrained, as_model, lambda: as_model(good)):
            with pytest.warns(DeprecationWarning, match="load_model"):
                got = call()
            assert torch.equal(got(x17()), expected)
    with pytest.warns(DeprecationWarning):
        assert as_model(model) is model
    assert "load_pretrained" not in dir(aeutils) and "load_model" in dir(aeutils)


def _entry_offset(data: bytes, info: zipfile.ZipInfo) -> int:
    """Where a stored (uncompressed) zip entry's bytes start: after its local header."""
    h = info.header_offset
    name_len = int.from_bytes(data[h + 26 : h + 28], "little")
    extra_len = int.from_bytes(data[h + 28 : h + 30], "little")
    return h + 30 + name_len + extra_len


def test_a_flipped_byte_in_any_stored_tensor_is_caught(tmp_path: Path) -> None:
    """Not just the weights: the optimiser, scheduler and RNG state a resume restores are covered too
    (one flipped byte in the middle of each stored tensor, one file per tensor)."""
    from aeutils.training import Trainer

    torch.manual_seed(0)
    trainer = Trainer(Autoencoder(SMALL), device="cpu", total_steps=10)
    trainer.step(torch.rand(2, 3, 17, 17))
    state = trainer.state_dict()
    state.update(epoch=1)
    good = save_checkpoint(tmp_path / "last.pt", trainer.module, train_state=state, epoch=1)
    loaded = load_checkpoint(good)  # the untouched file loads, optimiser state and all
    assert set(loaded.train_state["optimizer"]["state"]) and loaded.train_state["epoch"] == 1
    data = good.read_bytes()
    with zipfile.ZipFile(good) as zf:
        entries = [i for i in zf.infolist() if "/data/" in i.filename and i.file_size and i.compress_type == zipfile.ZIP_STORED]
    weights = {k for k in loaded.model.state_dict()}
    assert len(entries) > len(weights)  # optimiser moments and RNG states are stored tensors too
    for n, info in enumerate(entries):
        at = _entry_offset(data, info) + info.file_size // 2
        bad = bytearray(data)
        bad[at] ^= 0x01
        path = tmp_path / f"flip{n}.pt"
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match=r"flip\d+\.pt: corrupt checkpoint.*digest"):
            load_checkpoint(path)
        path.unlink()


def test_checkpoint_does_not_import_the_trainer() -> None:
    """No import cycle checkpoint -> training -> checkpoint: run discovery lives with the runs."""
    import subprocess
    import sys

    code = "import sys, aeutils.checkpoint as c; print('aeutils.training' in sys.modules, hasattr(c, 'pick_checkpoint'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    from aeutils.training import BEST_NAME, LAST_NAME, pick_checkpoint  # where it is now

    assert (LAST_NAME, BEST_NAME) == ("last.pt", "best.pt") and callable(pick_checkpoint)
