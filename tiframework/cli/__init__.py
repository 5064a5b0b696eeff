"""The `tiframework` console script.

Each module in this package that defines `register(subparsers)` contributes its
subcommands; `main` finds them with pkgutil, so adding a command never means editing
a central list: `train` (train, config), `dataset` (tag, tags, lint), `embedding`
(create, inspect, convert), `eval`, `sweep` (sweep, sweep-report), `compare`, `toyworld`;
`options` builds command-line options from the typed config. Command modules import the stages that load torch / diffusers /
open_clip inside their handlers so `tiframework --help` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import re
import sys

from tiframework import __version__
from tiframework.errors import RunInterrupted, UserError
from tiframework.logs import configure_logging

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
# Errors of the machine, not of the program: one line saying which file and what to do.
WRITE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EFBIG: "a file-size limit was hit",
                errno.EDQUOT: "the disk quota is used up", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.EROFS: "the file system is read-only",
                errno.ENOTDIR: "a file is where a folder should be", errno.EISDIR: "a folder is where a file should be",
                errno.EEXIST: "a file is where a folder should be"}


def write_error(exc: OSError) -> str:
    where = exc.filename or "a file"
    why = WRITE_ERRORS[exc.errno]
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}: {why}; fix its permissions, or write elsewhere (e.g. logging.runs_dir)"
    if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        return f"{where}: {why}; move it away, or write elsewhere (e.g. logging.runs_dir)"
    return (f"{where}: cannot write ({why}); nothing half-written was kept: free space and run again "
            "(training resumes from its last checkpoint with resume=<run folder>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiframework",
        description="Train, evaluate and compare textual-inversion embeddings for Stable Diffusion 1.x.",
    )
    parser.add_argument("--version", action="version", version=f"tiframework {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in modules:
        module = importlib.import_module(f"{__name__}.{name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a `nargs="*"` positional once an option follows it, so
    # `eval RUN --reference DIR eval.steps=2` leaves the override over: collect it.
    if extra and hasattr(args, "overrides") and all(_OVERRIDE.match(x) for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UserError as exc:
        if args.verbose or os.environ.get("TIFRAMEWORK_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if args.verbose or os.environ.get("TIFRAMEWORK_TRACEBACK") or exc.errno not in WRITE_ERRORS:
            raise
        print(f"error: {write_error(exc)}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        print(exc.message, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
