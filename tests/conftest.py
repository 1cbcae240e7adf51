"""Shared fixtures. Synthetic-slide builders live in tests/synthetic.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Keep the CPU tests predictable on small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def sample_slide_path() -> Path:
    """The bundled sample slide (checksum verified)."""
    from aeutils import sample_slide

    return sample_slide()
