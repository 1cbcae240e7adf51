"""User-facing errors. Each message is one line naming the file and the problem.

The CLI prints ``error: <message>`` on stderr and exits with code 2 for any :class:`AeutilsError`;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class AeutilsError(Exception):
    """Base class: a problem with the user's input (file, option), not a bug."""


class SlideError(AeutilsError):
    """A whole-slide image that cannot be used: missing, not a slide, truncated, no tissue, bad level."""


class AnnotationError(AeutilsError):
    """An annotation file that cannot be read (missing, malformed XML, no usable polygons)."""


class PatchError(AeutilsError):
    """An impossible patch request, or a patch image that is corrupt or unreadable."""


class CheckpointError(AeutilsError):
    """A checkpoint that is missing, corrupt, truncated, unsafe, or for another architecture."""


class TrainingError(AeutilsError):
    """Training cannot go on (non-finite loss, no data, ...); the last good checkpoint is kept."""


class FolderBusyError(AeutilsError):
    """An output folder another process is writing to (its lock file names that process's pid)."""


class DeviceError(AeutilsError):
    """A compute device asked for (``--device``, ``$MSCOPY_DEVICE``) that this machine does not have."""


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """``exc``'s message on one line (every run of whitespace, newlines included, becomes one space),
    cut to ``limit`` characters if given; the exception's type name when it has no message. The one
    way an underlying error is quoted inside an ``error: FILE: problem (...)`` line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None or len(text) <= limit else text[: max(0, limit - 3)] + "..."
