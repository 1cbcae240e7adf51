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


# --------------------------------------------------------------------------------------------- full disk
def test_a_full_disk_names_the_target_not_the_temp_file(tmp_path, monkeypatch) -> None:
    """ENOSPC (or numpy's errno-less short write) inside an atomic write: the OSError names the user's
    file, the old file is kept and no temp file is left (issue 20, item 11)."""
    import errno

    target = tmp_path / "map.tiff"
    atomic_write_bytes(target, b"old")
    with pytest.raises(OSError) as info:
        with atomic_path(target) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert (info.value.errno, info.value.filename, info.value.strerror) == (
        errno.ENOSPC, str(target), "No space left on device")
    with pytest.raises(OSError) as info:
        with atomic_path(target):
            raise OSError("4096 requested and 4064 written")
    assert info.value.filename == str(target) and "4064 written" in info.value.strerror
    real_write = os.write

    def full(fd, data):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"new")
    monkeypatch.setattr(os, "write", real_write)
    assert info.value.filename == str(target) and info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["map.tiff"]
    (tmp_path / "fig").mkdir()
    with pytest.raises(OSError) as info:
        atomic_write_bytes(tmp_path / "fig", b"png")
    assert info.value.filename == str(tmp_path / "fig") and "is a folder" in info.value.strerror


# --------------------------------------------------------------------------------------------- paths
def test_missing_reason_names_links_to_nowhere_and_loops(tmp_path) -> None:
    from aeutils.io import missing_reason

    (tmp_path / "f").write_text("x")
    os.symlink("loop", tmp_path / "loop")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    assert missing_reason(tmp_path / "f") is None
    assert missing_reason(tmp_path / "nope") == "no such file"
    assert missing_reason(tmp_path / "loop") == "symbolic link loop"
    assert missing_reason(tmp_path / "dangling") == f"dangling symbolic link (to {tmp_path / 'gone'})"


def test_path_inside_refuses_rows_that_leave_the_folder(tmp_path) -> None:
    from aeutils.io import path_inside

    out = tmp_path / "out"
    (out / "normal").mkdir(parents=True)
    os.symlink(tmp_path, out / "escape")
    assert path_inside(out, "normal/a.png") == out / "normal" / "a.png"
    for rel in ("../victim.txt", "/etc/passwd", str(tmp_path / "victim.txt"), "normal/../../victim.txt",
                "escape/victim.txt", ""):
        assert path_inside(out, rel) is None, rel


def test_remove_temp_files_only_ours_only_there(tmp_path) -> None:
    from aeutils.io import remove_temp_files

    (tmp_path / "normal").mkdir()
    (tmp_path / "deeper").mkdir()
    ours = [".last.pt.k2j4h6g8.tmp", ".s.encoding.tiff.0123456789ab.tmp", "normal/.s_0_0.png.a1b2c3d4e5f6.tmp"]
    theirs = ["last.pt", "notes.tmp", ".hidden", ".x.tmp", "deeper/.s_0_0.png.a1b2c3d4e5f6.tmp"]
    for name in ours + theirs:
        (tmp_path / name).write_text("x")
    assert remove_temp_files(tmp_path, ["normal"]) == 3
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(theirs)


# --------------------------------------------------------------------------------------------- one writer
_HOLD = """
import sys
from aeutils.io import folder_lock
with folder_lock(sys.argv[1], "holder", name=sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def hold_lock(folder, name: str = ".aeutils.lock"):  # type: ignore[no-untyped-def]
    """A separate process holding ``folder``'s lock ``name`` until its stdin is closed (``proc.stdin.close()``)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), name], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def release(proc) -> None:  # type: ignore[no-untyped-def]
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def test_a_second_process_is_refused_in_one_line_naming_the_folder_and_pid(tmp_path) -> None:
    from aeutils.errors import FolderBusyError
    from aeutils.io import folder_lock

    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        with pytest.raises(FolderBusyError) as info:
            with folder_lock(out, "test"):
                pass
        msg = str(info.value)
        assert msg.startswith(f"{out}: in use by another process (pid {holder.pid}: holder, since ")
        assert "\n" not in msg and "another folder" in msg
    finally:
        release(holder)
    assert not out.exists()  # released: the lock file is gone, and the folder the lock made
    with folder_lock(out, "test") as lock:  # free again
        assert lock.stale is None and lock.path.read_text().startswith(f'{{"pid": {os.getpid()}')
    assert not (out / ".aeutils.lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path) -> None:
    """kill -9 leaves the lock file with the dead pid; the kernel lock died with it: the next writer takes over."""
    import signal

    from aeutils.io import folder_lock

    out = tmp_path / "out"
    out.mkdir()
    holder = hold_lock(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert f'"pid": {holder.pid}' in (out / ".aeutils.lock").read_text()
    with folder_lock(out, "next") as lock:
        assert lock.stale is not None and lock.stale["pid"] == holder.pid
        assert f'"pid": {os.getpid()}' in lock.path.read_text()
    assert os.listdir(out) == []


def test_without_kernel_locks_a_live_pid_holds_and_a_dead_one_is_stale(tmp_path, monkeypatch) -> None:
    """File systems without locks (ENOLCK): the holder line's pid on this host decides."""
    import json
    import socket
    import subprocess
    import sys

    import aeutils.io as aio
    from aeutils.errors import FolderBusyError

    monkeypatch.setattr(aio, "_kernel_lock", lambda fd: None)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        line = {"pid": live.pid, "host": socket.gethostname(), "what": "extract", "since": "then"}
        (out / ".aeutils.lock").write_text(json.dumps(line))
        with pytest.raises(FolderBusyError, match=rf"pid {live.pid}: extract"):
            with aio.folder_lock(out):
                pass
        assert json.loads((out / ".aeutils.lock").read_text())["pid"] == live.pid  # left alone
        (out / ".aeutils.lock").write_text(json.dumps({**line, "pid": dead_pid}))
        with aio.folder_lock(out) as lock:
            assert lock.stale["pid"] == dead_pid
    finally:
        live.stdin.close()
        live.wait()


def test_lock_is_released_on_exceptions_and_not_kept_by_forked_children(tmp_path) -> None:
    import multiprocessing as mp

    from aeutils.io import folder_lock

    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        with folder_lock(fresh):
            raise RuntimeError("boom")
    assert not fresh.exists()  # made by the lock, nothing else written: removed again
    out = tmp_path / "out"
    ctx = mp.get_context("fork")
    with folder_lock(out):
        with folder_lock(out):  # reentrant in one process
            pass
        child = ctx.Process(target=__import__("time").sleep, args=(30,))
        child.start()
    try:
        with folder_lock(out):  # the sleeping forked child does not hold it
            pass
    finally:
        child.kill()
        child.join()


def test_exclusive_of_other_lock_files(tmp_path) -> None:
    from aeutils.errors import FolderBusyError
    from aeutils.io import folder_lock

    out = tmp_path / "out"
    shard = hold_lock(out, ".aeutils.shard-1-of-2.lock")
    try:
        with folder_lock(out, name=".aeutils.shard-2-of-2.lock", exclusive_of=(".aeutils.lock",)):
            pass  # another shard beside it: fine
        with pytest.raises(FolderBusyError, match=rf"pid {shard.pid}"):
            with folder_lock(out, exclusive_of=(".aeutils.shard-*.lock",)):
                pass
    finally:
        release(shard)
    assert not out.exists()


def test_a_full_disk_while_taking_the_lock_names_the_lock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first write of a run on a full disk is its lock line: the error names that file."""
    import errno

    import aeutils.io as io_mod

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_mod.os, "write", full)
    with pytest.raises(OSError) as info:
        with io_mod.folder_lock(tmp_path / "out", "extract"):
            pass
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / "out" / io_mod.LOCK_NAME)
