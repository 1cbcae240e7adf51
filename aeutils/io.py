"""Safe output folders: atomic writes, one writer per folder, paths that stay inside it.

Atomic writes (:func:`atomic_path`, :func:`atomic_write_bytes`): write to a temporary name in the same
folder, then rename over the target, so a reader (or a rerun after ``kill -9``) sees either the old file
or the complete new one, never a half-written file; an ``OSError`` (a full disk) names the target, not
the temp file. Temp files of killed writes (:data:`TEMP_RE`) are removed by the next run that holds the
folder (:func:`remove_temp_files`). :func:`folder_lock`: one writer per output folder (a lock file with
the owner's pid). :func:`path_inside`: a manifest's relative path that really lies inside its folder.
:func:`missing_reason`: "no such file", a dangling link or a link loop.
"""
from __future__ import annotations

import errno
import json
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from aeutils.errors import FolderBusyError, one_line

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: mode of finished files: what a plain ``open(path, "w")`` would give (mkstemp's temp files are 0600)
FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The caller writes the whole file to the yielded path. On an exception the temporary file is
    removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _naming(exc, target, tmp) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _naming(exc: OSError, target: Path, tmp: Path) -> OSError:
    """``exc`` (raised while writing ``tmp`` for ``target``) as an OSError naming ``target``: the
    user's file, not our temp name ("No space left on device", numpy's "4096 requested and 4064 written")."""
    if exc.filename not in (None, str(tmp), os.fspath(tmp)) and exc.filename2 is None:
        return exc  # about another file (e.g. an input read while writing): as it is
    why = exc.strerror or one_line(exc)
    if target.is_dir():
        why = "is a folder, not a file"
    new = OSError(exc.errno, why, str(target))
    new.__cause__ = exc
    return new


def _open_temp(target: Path) -> tuple[int, Path]:
    """A new, exclusively created temp file beside ``target`` (mode :data:`FILE_MODE`): (fd, path)."""
    while True:
        tmp = target.with_name(f".{target.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path.

    One exclusive ``open`` of a random temp name (the mode ``open(path, "w")`` would give), one write,
    a rename: half the system calls of :func:`atomic_path`, which matters for thousands of small PNGs.
    """
    target = Path(path)
    try:
        fd, tmp = _open_temp(target)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_temp(target)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _naming(exc, target, tmp) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


# ---------------------------------------------------------------------------------------------------
# what is wrong with a path that cannot be opened


def missing_reason(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be opened: ``"no such file"``, ``"dangling symbolic link (to TARGET)"`` or
    ``"symbolic link loop"``; None when it exists (a file, a folder or anything else)."""
    try:
        os.stat(path)
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return exc.strerror or str(exc)
    if os.path.islink(path):
        return f"dangling symbolic link (to {os.readlink(path)})"
    return "no such file"


def path_inside(folder: str | os.PathLike[str], rel: str) -> Path | None:
    """``folder / rel`` if that entry lies inside ``folder`` (its parent folder resolves inside it, symbolic
    links followed; ``rel`` relative, no ``..``), else None: for a manifest row naming a file to remove."""
    if not rel or os.path.isabs(rel) or Path(rel).drive or ".." in Path(rel).parts:
        return None
    root = Path(folder).resolve()
    target = Path(folder) / rel
    try:
        parent = target.parent.resolve()
    except (OSError, RuntimeError):  # a link loop on the way
        return None
    return target if parent == root or root in parent.parents else None


# ---------------------------------------------------------------------------------------------------
# temp files of killed writes

#: Names of this module's temp files: ``.<target name>.<random part>.tmp`` (8 mkstemp characters, or 12
#: hex digits; 6 to 16 word characters are taken as ours). Group 1: the target's name.
TEMP_RE = re.compile(r"^\.(.+)\.([A-Za-z0-9_]{6,16})\.tmp$")


def remove_temp_files(folder: str | os.PathLike[str], subfolders: Iterable[str] = ()) -> int:
    """Remove the temp files (:data:`TEMP_RE`) that killed writes left in ``folder`` and its
    ``subfolders`` (names relative to it); only call it while holding the folder's :func:`folder_lock`
    (nobody else writes there then). Returns how many were removed."""
    n = 0
    for sub in ("", *subfolders):
        d = Path(folder) / sub if sub else Path(folder)
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if TEMP_RE.match(e.name) and e.is_file(follow_symlinks=False):
                try:
                    os.unlink(e.path)
                    n += 1
                except FileNotFoundError:
                    pass
    return n


# ---------------------------------------------------------------------------------------------------
# one writer per folder

#: The lock file of a folder's one writer (:func:`folder_lock`).
LOCK_NAME = ".aeutils.lock"
_LOCK_BYTE = 1 << 20  # the byte msvcrt locks (beyond the holder's line, which stays readable)
_HELD: dict[str, list[Any]] = {}  # lock file (real path) -> [fd, depth] of the locks this process holds


def _close_held_in_child() -> None:
    """After a fork: the child (a pool or DataLoader worker) must not keep its parent's locks alive."""
    for fd, _ in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


def _kernel_lock(fd: int) -> bool | None:
    """Take the kernel's exclusive lock on ``fd`` without waiting: True taken, False held by another
    process, None when the file system has no locks (then the holder's pid decides)."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            import msvcrt

            os.lseek(fd, _LOCK_BYTE, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK):
            return False
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
            return None
        raise


def _kernel_unlock(fd: int) -> None:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        else:  # pragma: no cover - Windows
            import msvcrt

            os.lseek(fd, _LOCK_BYTE, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
    except OSError:
        pass


def _holder(fd: int, wait: bool = True) -> dict[str, Any]:
    """The lock file's holder line (pid, host, what, since); {} if empty or unreadable. ``wait``: give a
    holder that has just locked the file up to 0.2 s to write its line."""
    for _ in range(20 if wait else 1):
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            data = json.loads(os.read(fd, 4096).decode("utf-8", "replace"))
            if isinstance(data, dict) and isinstance(data.get("pid"), int):
                return data
        except (OSError, ValueError):
            pass
        if wait:
            time.sleep(0.01)
    return {}


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (POSIX; on Windows every pid counts as alive)."""
    if os.name != "posix":  # pragma: no cover - os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _busy(folder: Path, lock: Path, who: dict[str, Any]) -> FolderBusyError:
    if not who:
        return FolderBusyError(f"{folder}: in use by another process (its lock {lock.name} names no pid yet); "
                               f"wait for it to finish, or use another folder")
    host = who.get("host") or "?"
    here = host == socket.gethostname()
    what = f"{who['what']}, " if who.get("what") else ""
    gone = "" if here else f" (if that process is gone, remove {lock})"
    return FolderBusyError(f"{folder}: in use by another process (pid {who['pid']}{'' if here else ' on ' + host}: "
                           f"{what}since {who.get('since', '?')}); wait for it to finish, or use another folder{gone}")


def _probe(folder: Path, lock: Path) -> None:
    """Raise :class:`FolderBusyError` if another process holds ``lock`` (a lock file of ``folder``)."""
    try:
        fd = os.open(lock, os.O_RDWR | getattr(os, "O_BINARY", 0))
    except (FileNotFoundError, IsADirectoryError):
        return
    try:
        got = _kernel_lock(fd)
        if got:
            _kernel_unlock(fd)
            return
        who = _holder(fd)
        if got is None and not (who.get("host") == socket.gethostname() and not _pid_alive(int(who["pid"]))):
            raise _busy(folder, lock, who)
        if got is False:
            raise _busy(folder, lock, who)
    finally:
        os.close(fd)


class FolderLock:
    """What :func:`folder_lock` holds: the ``path`` of the lock file, and ``stale``: the holder line
    (pid, host, what, since) of a lock left by a process that ended without releasing it (taken over),
    or None."""

    def __init__(self, path: Path, stale: dict[str, Any] | None) -> None:
        self.path, self.stale = path, stale


def _acquire(folder: Path, lock: Path, what: str) -> tuple[int, dict[str, Any] | None]:
    """Open and lock ``lock``, write this process's holder line: (fd, the stale holder line or None)."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        except FileNotFoundError:  # the folder went away under us (a lock releasing the folder it made)
            folder.mkdir(parents=True, exist_ok=True)
            continue
        except OSError as exc:  # a full disk or a read-only folder: name the lock file
            raise OSError(exc.errno, exc.strerror or one_line(exc), str(lock)) from exc
        try:
            got = _kernel_lock(fd)
            who = _holder(fd) if got is not True else {}
            if got is False or (got is None and who and (who.get("host") != socket.gethostname()
                                                         or _pid_alive(int(who["pid"])))):
                raise _busy(folder, lock, who)
            try:  # a holder that was releasing may have unlinked the file we locked: start again
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
            if not same:
                if got:
                    _kernel_unlock(fd)
                os.close(fd)
                continue
            old = _holder(fd, wait=False) if got else who
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            line = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            try:
                os.write(fd, (json.dumps(line) + "\n").encode("utf-8"))
            except OSError as exc:  # a full disk: name the lock file, not just the errno
                raise OSError(exc.errno, exc.strerror or one_line(exc), str(lock)) from exc
            return fd, (old or None)
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise


@contextmanager
def folder_lock(
    folder: str | os.PathLike[str], what: str = "", *, name: str = LOCK_NAME, exclusive_of: Sequence[str] = (),
) -> Iterator[FolderLock]:
    """Hold ``folder``'s lock file ``name`` (one writer per output folder) while the block runs.

    The lock file holds the owner's pid, host, ``what`` (the command) and start time, and carries
    the kernel's lock (``flock``; released by the kernel when the owner dies, ``kill -9`` included),
    so a lock file left by a dead process is taken over (:attr:`FolderLock.stale` says whose it
    was). Where the file system has no locks, a dead pid on this host marks a stale lock. Another
    process holding it, or any lock file of ``folder`` matching one of the glob patterns
    ``exclusive_of``: :class:`FolderBusyError`, one line naming the folder and that process's pid.
    The folder is created if needed, and removed again on release if the lock made it and nothing
    else was written there. Reentrant within a process; forked children do not inherit it. The lock
    file is removed on release (exceptions included).
    """
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / name
    key = os.path.realpath(lock)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield FolderLock(lock, None)
        finally:
            _HELD[key][1] -= 1
        return
    try:
        fd, stale = _acquire(folder, lock, what)
    except BaseException:
        if made:
            _rmdir_quietly(folder)
        raise
    _HELD[key] = [fd, 1]
    try:
        for pattern in exclusive_of:
            for other in sorted(folder.glob(pattern)):
                if other.name != name:
                    _probe(folder, other)
        yield FolderLock(lock, stale)
    finally:
        _HELD.pop(key, None)
        if fcntl is not None:  # unlink while locked: a process waiting on this file then starts again
            _unlink_quietly(lock)
        _kernel_unlock(fd)
        os.close(fd)
        if fcntl is None:  # pragma: no cover - Windows cannot remove an open file
            _unlink_quietly(lock)
        if made:
            _rmdir_quietly(folder)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _rmdir_quietly(path: Path) -> None:
    try:
        path.rmdir()  # only if empty
    except OSError:
        pass
