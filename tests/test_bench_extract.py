"""Smoke run of bench/extract.py: both arms write the same patches, pixel for pixel, and it prints the ratio."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_extract_smoke(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "extract.py"), "--smoke", "--workers", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    m = re.search(r"same patches: (\d+) files, (\d+) compared pixel for pixel, all identical", out)
    assert m and int(m.group(1)) > 10 and m.group(1) == m.group(2), out
    naive = float(re.search(r"naive loop .*?:\s+([\d.]+) patches/s", out).group(1))
    ours = float(re.search(r"aeutils extract .*?:\s+([\d.]+) patches/s", out).group(1))
    ratio = float(re.search(r"speed-up: ([\d.]+)x", out).group(1))
    assert naive > 0 and ours > 0
    assert abs(ratio - ours / naive) < 0.02 * ratio + 0.01  # the printed ratio is the measured one
