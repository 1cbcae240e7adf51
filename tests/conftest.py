"""Shared fixtures. Synthetic-slide builders live in tests/synthetic.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Keep the CPU tests predictable on small CI machines: at most two OpenMP threads, and idle threads
# sleep instead of spinning (spinning threads made subprocess-heavy tests, e.g. torchrun ranks and
# notebook kernels, many times slower when they shared the two cores). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def sample_slide_path() -> Path:
    """The bundled sample slide (checksum verified)."""
    from aeutils import sample_slide

    return sample_slide()
