"""The training benches run end to end in --smoke mode (seconds) and print their result lines.

bench/train_speed.py: trainer step vs plain fp32 loop, prints img/s per arm and the speed-up ratio.
bench/quality.py: autoencoder vs bicubic vs JPEG on held-out patches, prints a markdown table; run
here on a randomly initialised checkpoint so it does not depend on the shipped model.
"""
from __future__ import annotations

import os
import re
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


def test_train_speed_smoke_prints_both_arms_and_ratio() -> None:
    proc = _run("train_speed.py", "--smoke", "--options")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for arm in ("plain fp32", "trainer", r"\+chan_last", r"\+bf16"):
        m = re.search(rf"{arm}:\s+([0-9.e+]+) img/s median", out)
        assert m, out
        assert float(m.group(1)) > 0
    m = re.search(r"speed-up trainer / plain fp32: ([0-9.]+)x \(median img/s\)", out)
    assert m, out
    assert float(m.group(1)) > 0
    assert re.search(r"one step: [0-9.]+ GFLOP per image", out), out
    assert re.search(r"CPU-time speed-up .*: [0-9.]+x", out), out  # the test forces the CPU
    for option in ("+chan_last", "+bf16"):
        assert re.search(rf"speed-up \{option} / plain fp32: [0-9.]+x", out), out
    m = re.search(r"fp32 matmul rate, same run: ([0-9.e+]+) GFLOP/s .* plain fp32 reaches (\d+)% of it, "
                  r"a 1.3x speed-up at the same FLOPs would need (\d+)%", out)
    assert m, out
    assert float(m.group(1)) > 0 and int(m.group(3)) >= int(m.group(2))


def test_quality_smoke_prints_markdown_table(tmp_path: Path) -> None:
    import torch

    from aeutils.checkpoint import save_checkpoint
    from aeutils.model import Autoencoder, AutoencoderConfig

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "random.pt", Autoencoder(AutoencoderConfig(widths=(8, 8, 4), n_blocks=1)))
    proc = _run("quality.py", "--smoke", "--checkpoint", str(ckpt))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| method | numbers per patch / bytes | PSNR mean (dB) | SSIM mean |" in out, out
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\| (.+?) \| (.+?) \| ([-0-9.]+) \| ([-0-9.]+) \|$", line)
        if m:
            rows[m.group(1)] = (float(m.group(3)), float(m.group(4)))
    names = list(rows)
    assert any(n.startswith("autoencoder, float32") for n in names), out
    assert "bicubic from 3x27x27" in rows and "bicubic from 3x46x46" in rows, out
    jpeg = [n for n in names if n.startswith("JPEG <= 8464 B")]
    assert jpeg and any(n.startswith("JPEG <= 4232 B") for n in names), out
    # sanity that could fail: more thumbnail pixels reconstruct better, more bytes give better JPEG
    assert rows["bicubic from 3x46x46"][0] > rows["bicubic from 3x27x27"][0], out
    small_jpeg = next(n for n in names if n.startswith("JPEG <= 4232 B"))
    assert rows[jpeg[0]][0] > rows[small_jpeg][0], out
    for psnr, ssim in rows.values():
        assert 0 < psnr < 100 and -1 <= ssim <= 1
    assert re.search(r"beats bicubic from 3x46x46 in PSNR and SSIM: (yes|no)", out), out


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


def test_cpu_step_routes_smoke_checks_gradients_and_prints_ratios() -> None:
    proc = _run("cpu_step_routes.py", "--smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    errors = dict(re.findall(r"(\w+): gradient vs plain, relative L2 error ([0-9.e+-]+)", out))
    assert errors.get("plain") == "0.0e+00" and "layout" in errors, out
    # every route computes the plain loop's gradients (NNPACK's Winograd kernels round more)
    assert all(float(e) < 2e-2 for e in errors.values()), out
    ratios = dict(re.findall(r"(\w+): [0-9.e+]+ img/s median .*, ([0-9.]+)x plain", out))
    assert ratios.get("plain") == "1.00" and float(ratios["layout"]) > 0, out
    m = re.search(r"convolution operators: (\d+)% of a plain step", out)
    assert m and 0 < int(m.group(1)) <= 100, out
    assert re.search(r"best route: \w+ at [0-9.]+x plain", out), out
