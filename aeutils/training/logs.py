"""What a run records as it goes: ``log.csv`` (one row per epoch, rewritten atomically, read back on
resume), TensorBoard (step loss and LR, epoch metrics, an input / reconstruction grid) and the few
printed lines (a banner, an epoch line every N epochs, a progress bar)."""
from __future__ import annotations

import csv
import io
import math
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from aeutils.io import atomic_write_text
from aeutils.training.trainer import Trainer

__all__ = ["LOG_NAME", "read_log", "write_log", "open_writer", "close_writer", "log_step", "log_epoch", "epoch_line", "epoch_printed",
           "epoch_bar"]

LOG_NAME = "log.csv"

#: the per-epoch columns that also go to TensorBoard (as ``epoch/<name>``)
EPOCH_SCALARS = ("train_loss", "val_loss", "val_psnr", "val_ssim", "images_per_s")


def read_log(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    """The rows of ``log.csv`` up to ``upto_epoch`` (numbers parsed); ``[]`` if there is no log."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return [r for r in rows if int(r["epoch"]) <= upto_epoch]


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def write_log(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` as CSV (columns in first-seen order, floats to 6 significant digits), atomically."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def open_writer(out: Path, global_step: int) -> Any:
    """A TensorBoard SummaryWriter on ``out/tensorboard`` (a resumed run's later events purged).

    TensorBoard writes in a thread of its own; a write that fails there (a full disk) is kept by the
    thread and raised by the writer's next call here, so the thread prints nothing
    (:func:`_quiet_writer_thread`) and the error surfaces once, as an ``OSError`` naming the folder."""
    from torch.utils.tensorboard import SummaryWriter

    _quiet_writer_thread()
    folder = out / "tensorboard"
    with _naming(folder):
        writer = SummaryWriter(str(folder), purge_step=global_step or None)
    writer.aeutils_folder = folder
    return writer


def close_writer(writer: Any, *, quiet: bool = False) -> None:
    """Flush and close ``writer``; ``quiet``: ignore an error doing so (another one is already being
    raised, and is the one to report)."""
    try:
        with _naming(getattr(writer, "aeutils_folder", None)):
            writer.close()
    except Exception:
        if not quiet:
            raise


@contextmanager
def _naming(folder: Path | None) -> Iterator[None]:
    """An ``OSError`` without a file name (TensorBoard's writes give none) gets ``folder`` as its file name."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and folder is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(folder)) from None
        raise


def _quiet_writer_thread() -> None:
    """Let an ``OSError`` in TensorBoard's writer thread (``_AsyncWriterThread``) print no traceback: the
    thread keeps the exception and the writer's next call in the main thread raises it (at the latest
    when it is closed: close flushes first). Other exceptions, and other threads, keep the default hook."""
    previous = threading.excepthook
    if getattr(previous, "aeutils_quiet", False):
        return

    def hook(args: Any) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        previous(args)

    hook.aeutils_quiet = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def log_step(writer: Any, trainer: Trainer, loss: float) -> None:
    """The step loss and learning rate at ``trainer.global_step``."""
    with _naming(getattr(writer, "aeutils_folder", None)):
        writer.add_scalar("train/loss_step", loss, trainer.global_step)
        writer.add_scalar("train/lr", trainer.lr, trainer.global_step)


def log_epoch(writer: Any, trainer: Trainer, val_ds: Any, row: dict[str, Any]) -> None:
    """An epoch's :data:`EPOCH_SCALARS` and the input / reconstruction grid, flushed."""
    epoch = row["epoch"]
    with _naming(getattr(writer, "aeutils_folder", None)):
        for k in EPOCH_SCALARS:
            writer.add_scalar(f"epoch/{k}", row[k], epoch)
        _log_images(writer, trainer, val_ds, epoch)
        writer.flush()


def _log_images(writer: Any, trainer: Trainer, val_ds: Any, epoch: int, n: int = 8) -> None:
    """Input (top row) / reconstruction (bottom row) grid of the first validation patches."""
    if not len(val_ds):
        return
    from torchvision.utils import make_grid

    x = torch.stack([val_ds[i] for i in range(min(n, len(val_ds)))])
    y, _ = trainer.reconstruct(x)
    writer.add_image("val/input_vs_reconstruction", make_grid(torch.cat([x, y.cpu()]), nrow=x.shape[0]), epoch)


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """``epoch 3/10: train loss ..., val PSNR ... dB, SSIM ..., ... img/s (best)`` for a log row."""
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.5f}, val PSNR {row['val_psnr']:.2f} dB, "
        f"SSIM {row['val_ssim']:.4f}, {row['images_per_s']:.1f} img/s{' (best)' if row['best'] else ''}"
    )


def epoch_printed(epoch: int, epochs: int, *, start_epoch: int = 0, print_every: int | None = None,
                  stopped: bool = False) -> bool:
    """Whether the line of ``epoch`` (1-based) is printed: every ``print_every`` epochs (None: about
    20 lines per run), the first of this call, the last, and one that stopped the run early."""
    every = print_every or max(1, math.ceil(epochs / 20))
    return epoch % every == 0 or epoch == start_epoch + 1 or epoch == epochs or stopped


def epoch_bar(total: int, epoch: int, epochs: int, done: int = 0) -> Any:
    """A tqdm bar over an epoch's ``total`` steps, ``done`` of them already (not left behind when done)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
