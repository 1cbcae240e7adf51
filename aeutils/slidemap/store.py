"""The resumable work folder of one slide's run: each finished core saved at once, atomically."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from aeutils.io import atomic_path


def _whole_npy(path: Path) -> bool:
    """Whether ``path`` is a whole ``.npy`` file: a readable header and exactly the bytes it announces."""
    try:
        with open(path, "rb") as f:
            fmt = np.lib.format
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
            if dtype.hasobject:
                return False
            need = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return path.stat().st_size == need
    except (OSError, ValueError, TypeError, SyntaxError):
        return False


class WorkStore:
    """The finished cores of one run: ``z<ty>_<tx>.npy`` (latent, float32), ``r<ty>_<tx>.npy``
    (reconstruction, uint8 RGB), ``m<ty>_<tx>.npy`` (tissue mask of the latent core, bool), and
    ``settings.json``. Each file is written atomically, so a kill leaves only whole files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _p(self, kind: str, ty: int, tx: int) -> Path:
        return self.folder / f"{kind}{ty:05d}_{tx:05d}.npy"

    def settings(self) -> dict[str, Any] | None:
        """The settings the folder was started with (None if absent or unreadable)."""
        try:
            return json.loads((self.folder / "settings.json").read_text())
        except (OSError, ValueError):
            return None

    def start(self, settings: dict[str, Any]) -> bool:
        """Open for ``settings``: True if earlier work with the same settings is kept (resume);
        otherwise the folder is emptied and started afresh."""
        if self.folder.is_dir() and self.settings() == settings:
            return True
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        with atomic_path(self.folder / "settings.json", fsync=False) as tmp:
            tmp.write_text(json.dumps(settings, sort_keys=True))
        return False

    def done(self, ty: int, tx: int, reconstruction: bool) -> bool:
        """Whether core (ty, tx) is finished: its latent and mask (and reconstruction if asked) are whole
        ``.npy`` files. A damaged one (its header or size wrong: a disk error, a hand edit) is removed,
        so the core is encoded again."""
        need = ("z", "m") + (("r",) if reconstruction else ())
        ok = True
        for k in need:
            p = self._p(k, ty, tx)
            if p.is_file() and not _whole_npy(p):
                p.unlink(missing_ok=True)
            ok = ok and p.is_file()
        return ok

    def todo(self, tiles: Sequence[tuple[int, int]], resumed: bool, reconstruction: bool) -> list[tuple[int, int]]:
        """The cores of ``tiles`` still to encode (all of them unless ``resumed``)."""
        return [t for t in tiles if not (resumed and self.done(*t, reconstruction))]

    def save(self, kind: str, ty: int, tx: int, a: np.ndarray) -> None:
        """Store array ``a`` as ``kind`` (``z``, ``m`` or ``r``) of core (ty, tx), atomically."""
        with atomic_path(self._p(kind, ty, tx), fsync=False) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, a)

    def load(self, kind: str, ty: int, tx: int) -> np.ndarray | None:
        """The stored array (read fully, the mapping closed), or None."""
        p = self._p(kind, ty, tx)
        if not p.is_file():
            return None
        return np.load(p)

    def tissue_values(self, tiles: Sequence[tuple[int, int]]) -> Iterator[np.ndarray]:
        """The latent values under the tissue mask, one 1-D float32 array per stored core of ``tiles``."""
        for t in tiles:
            z, m = self.load("z", *t), self.load("m", *t)
            if z is not None and m is not None:
                yield z[m]

    def remove(self) -> None:
        """Delete the folder (after the maps are written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
