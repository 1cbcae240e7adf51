"""Command line: ``python -m aeutils {extract,manifest,train,encode,figures} ...``.

Each command lives in its own module, imported only when that command runs (so ``extract`` never
imports torch). A command module provides::

    def add_cli_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run_cli(args: argparse.Namespace) -> int: ...   # the exit code

Any :class:`~aeutils.errors.AeutilsError` becomes one ``error: ...`` line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from aeutils.errors import AeutilsError

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("aeutils.patches", "cut tissue patches from whole-slide images into PNGs + manifest.csv"),
    "train": ("aeutils.training", "train the autoencoder on extracted patches (CPU, GPU, or torchrun)"),
    "figures": ("aeutils.viz", "make the README figures with the shipped model and the sample slide"),
    "encode": ("aeutils.slidemap", "encode whole slides into seamless encoding maps (tiled pyramidal TIFF)"),
    "manifest": ("aeutils.manifest", "merge the manifests of extract --shard runs: manifest merge OUT..."),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aeutils",
        description="mscopy-AE: histology autoencoder encodings.",
        epilog="Run 'python -m aeutils COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _names_printable() -> None:
    """File names that are not UTF-8 (bytes on Linux) are printed as they are (their bytes, on a UTF-8
    stdout), not a UnicodeEncodeError; stderr already escapes them."""
    out = sys.stdout
    if getattr(out, "errors", None) == "strict" and hasattr(out, "reconfigure"):
        utf8 = (getattr(out, "encoding", "") or "").lower().replace("-", "") == "utf8"
        try:
            out.reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")
        except (ValueError, OSError):  # pragma: no cover - a stream that cannot be reconfigured
            pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv or argv[0] in ("-h", "--help"):
            parser.print_help()
            return 0 if argv else 2
        parser.print_usage(sys.stderr)
        print(f"error: unknown command {argv[0]!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    _names_printable()
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"python -m aeutils {name}", description=COMMANDS[name][1])
    module.add_cli_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run_cli(args) or 0)
    except AeutilsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable --out, a full disk: say which file, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
