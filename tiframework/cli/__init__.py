"""The `tiframework` console script.

Each module in this package that defines `register(subparsers)` contributes its
subcommands; `main` finds them with pkgutil, so adding a command never means editing
a central list. Command modules import the stages that load torch / diffusers /
open_clip inside their handlers so `tiframework --help` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import pkgutil
import re
import sys
import warnings

from tiframework import __version__
from tiframework.errors import UserError

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
# Libraries whose INFO lines say less than ours (Lightning's GPU/TPU availability and its
# cloud-logger advert, open_clip's "Loading pretrained ... weights"): warnings still show.
QUIET_LOGGERS = ("pytorch_lightning", "lightning", "lightning_fabric", "open_clip", "httpx", "urllib3")
# Failures that already say everything in one line: a traceback under them is noise.
EXPECTED_FAILURES = ("UserError", "TrialFailed", "UnreadableImage")


class QuietLibraries(logging.Filter):
    """INFO lines from tiframework only; other loggers (Lightning, which resets its own level
    when imported; open_clip, which logs to the root logger; optuna) show warnings and errors.
    A warning about an expected failure (a failed sweep trial) keeps its line, not its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and not record.name.startswith("tiframework"):
            return False
        if record.name.startswith("optuna") and record.getMessage().endswith("failed with value None."):
            return False  # optuna's echo of the line before it
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ in EXPECTED_FAILURES:
            record.exc_info, record.exc_text = None, None
        return True


def configure_logging(verbose: bool) -> None:
    """One handler on the root logger; library noise filtered unless `verbose`."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, QuietLibraries) for f in handler.filters):
            handler.addFilter(QuietLibraries())
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's banner lines; the tracker prints the run's path once
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar
    # Lightning with current torch warns about a torch API it calls, on every run.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


# Errors of the machine, not of the program: one line saying which file and what to do.
WRITE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EFBIG: "a file-size limit was hit",
                errno.EDQUOT: "the disk quota is used up", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.EROFS: "the file system is read-only"}


def write_error(exc: OSError) -> str:
    where = exc.filename or "a file"
    why = WRITE_ERRORS[exc.errno]
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}: {why}; fix its permissions, or write elsewhere (e.g. logging.runs_dir)"
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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
