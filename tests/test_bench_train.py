"""The training benches run end to end in --smoke mode (seconds); their numbers come back as data.

bench/train_speed.py: the trainer (auto speed choice) vs a plain fp32 loop.
bench/quality.py: autoencoder vs bicubic vs JPEG on held-out patches, run here on a randomly initialised
checkpoint so it does not depend on the shipped model.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "MSCOPY_DEVICE": "cpu"}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def test_train_speed_smoke_returns_checked_numbers(monkeypatch) -> None:
    monkeypatch.setenv("MSCOPY_DEVICE", "cpu")
    monkeypatch.delenv("MSCOPY_CPU_SPEED", raising=False)
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import train_speed
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from aeutils.speed import CANDIDATES, decide

    r = train_speed.main(["--smoke", "--options", "--quality", "4"])
    arms = ["plain fp32", "trainer (auto)", *CANDIDATES]
    assert list(r["median"]) == arms and all(r["median"][a] > 0 for a in arms)
    assert all(len(r["rates"][a]) == 2 for a in arms)
    assert r["ratio"] == r["median"]["trainer (auto)"] / r["median"]["plain fp32"]
    choice = r["choice"]
    assert choice["source"] == "probe" and set(choice["rates"]) == set(CANDIDATES)
    assert choice["name"] == decide(choice["rates"]) and choice["probe_seconds"] > 0
    # the target follows the (reported) CPU flags; met is computed from the ratio
    assert r["target"] == (1.8 if r["cpu"]["amx_bf16"] else 0.95) and r["met"] == (r["ratio"] >= r["target"])
    assert r["flops_per_image"] > 0 and r["cpu_ratio"] > 0
    q = r["quality"]
    assert q["steps"] == 4 and set(q["psnr"]) == {"fp32", choice["name"]}
    assert all(0 < v < 100 for v in q["psnr"].values())
    assert q["difference_db"] == q["psnr"][choice["name"]] - q["psnr"]["fp32"]


def test_quality_smoke_returns_checked_numbers(tmp_path: Path) -> None:
    """bench/quality.py on a randomly initialised checkpoint (no dependence on the shipped model): the
    numbers come back as data; checks that could fail on them, and the CLI still runs."""
    import torch

    from aeutils.checkpoint import save_checkpoint
    from aeutils.model import Autoencoder, AutoencoderConfig
    from aeutils.sample import SAMPLES

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "random.pt", Autoencoder(AutoencoderConfig(widths=(8, 8, 4), n_blocks=1)))
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import quality
    finally:
        sys.path.remove(str(ROOT / "bench"))
    r = quality.run(["--smoke", "--checkpoint", str(ckpt)])
    assert r["checkpoint"] == str(ckpt) and r["split"] == "test"
    assert list(r["slides"]) == [s.name for s in SAMPLES]
    for name, rows in r["slides"].items():
        ae = next(m for m in rows if m.startswith("autoencoder, float32"))
        jpeg = [m for m in rows if m.startswith("JPEG <= 8464 B")]
        small_jpeg = [m for m in rows if m.startswith("JPEG <= 4232 B")]
        assert jpeg and small_jpeg and "bicubic from 3x27x27" in rows, rows
        # more thumbnail pixels reconstruct better, more bytes give better JPEG
        assert rows["bicubic from 3x46x46"]["psnr"] > rows["bicubic from 3x27x27"]["psnr"], name
        assert rows[jpeg[0]]["psnr"] > rows[small_jpeg[0]]["psnr"], name
        for row in rows.values():
            assert 0 < row["psnr"] < 100 and -1 <= row["ssim"] <= 1
        bic = rows["bicubic from 3x46x46"]
        assert r["beats"][name] == (rows[ae]["psnr"] > bic["psnr"] and rows[ae]["ssim"] > bic["ssim"])
    assert r["beats_all"] == all(r["beats"].values())
    proc = _run("quality.py", "--smoke", "--checkpoint", str(ckpt))
    assert proc.returncode == 0 and proc.stdout.startswith(f"checkpoint: {ckpt}"), proc.stderr[-3000:]


def test_jpeg_at_budget_respects_budget_and_picks_largest_fit() -> None:
    import io

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from quality import jpeg_at_budget
    finally:
        sys.path.remove(str(ROOT / "bench"))
    rng = np.random.default_rng(0)
    img = (rng.random((45, 45, 3)) * 255).astype(np.uint8)
    budget = 2500
    decoded, q, nbytes = jpeg_at_budget(img, budget)
    assert decoded.shape == img.shape and nbytes <= budget
    sizes = {}
    for qq in range(1, 96):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=qq, optimize=True)
        sizes[qq] = len(buf.getvalue())
    assert nbytes == max(s for s in sizes.values() if s <= budget)
    assert sizes[q] == nbytes
