"""Atomic writes: all or nothing, ordinary permissions, no temp files left behind."""
from __future__ import annotations

import os
import stat

import pytest

from aeutils.io import FILE_MODE, atomic_path, atomic_write_bytes, atomic_write_text


def test_write_replaces_whole_file_with_plain_permissions(tmp_path) -> None:
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == FILE_MODE
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_atomic_write_bytes_failure_keeps_old_file_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "a.png"
    atomic_write_bytes(target, b"good", fsync=False)
    with pytest.raises(TypeError):
        atomic_write_bytes(target, 12345, fsync=False)  # type: ignore[arg-type]  # not bytes: fails mid-write
    assert target.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["a.png"]
    big = os.urandom(3_000_000)  # more than one write() may take
    atomic_write_bytes(tmp_path / "new" / "big.bin", big)
    assert (tmp_path / "new" / "big.bin").read_bytes() == big
