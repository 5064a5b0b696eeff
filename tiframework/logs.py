"""Log output: our own lines, and only warnings and errors from the libraries underneath.

The CLI and spawned sweep workers both configure logging here, so a run prints the same
lines either way (`-v` shows everything).
"""

from __future__ import annotations

import logging
import os
import warnings

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


def configure_logging(verbose: bool, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """One handler on the root logger; library noise filtered unless `verbose`."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt)
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
