"""Ctrl-C and SIGTERM (a scheduler's kill) stop a run cleanly at the end of an optimizer step.

Left to Lightning, Ctrl-C ends `fit` mid-step with `sys.exit(1)`: nothing saved since the
last `save_every`, no summary, no word on how to resume. Instead, while training runs,
SIGINT and SIGTERM only set a flag; the step in progress finishes, `StopOnSignal` stops the
trainer there, and `train()` saves that step exactly as a normal end does (vectors and AdamW
state), writes `summary.json` with `stopped: "interrupted"` and raises `RunInterrupted`,
whose message says where it saved and the command that resumes it. A second Ctrl-C stops at
once (the last saved checkpoint is what a resume continues from).
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import threading
from pathlib import Path

import pytorch_lightning as pl

from tiframework.training.callbacks import optimizer_step_done

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED = "interrupted"


class StopOnSignal(pl.Callback):
    """Install with `with StopOnSignal() as stop:`; `stop.received` names the signal caught."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        # Handlers can only be installed from the main thread (a sweep may train in another).
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # asked twice: stop now, without saving
        self.received = signal.Signals(signum).name
        log.warning("%s: stopping after this step and saving it (Ctrl-C again stops at once, without saving)",
                    self.received)

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning's fit installs its own SIGTERM handler, which ends fit mid-step with a
        # SystemExit: ours goes back on top (Lightning restores ours, as it found it, after fit).
        if signal.SIGTERM in self._previous:
            signal.signal(signal.SIGTERM, self._handle)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is not None and optimizer_step_done(trainer, batch_idx):
            trainer.should_stop = True


def resume_command(run_dir: Path, argv: list[str] | None = None) -> str:
    """The command line that continues this run: the same one, with `resume=<run folder>` in
    place of any `resume=` (and without `--fresh`, which would move the run aside). Under
    another command (a sweep), that command again: it redoes the interrupted trial."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return f"tiframework train <config> ... resume={shlex.quote(str(run_dir))}"
    if "train" not in argv:
        return shlex.join(["tiframework", *argv[1:]])
    args = [a for a in argv[argv.index("train"):] if not a.startswith("resume=") and a != "--fresh"]
    return shlex.join(["tiframework", *args, f"resume={run_dir}"])


def interrupted_message(signal_name: str, run_dir: Path, saved: Path | None, step: int | None) -> str:
    where = f"saved step {step} to {saved}" if saved is not None else "stopped without saving this step"
    return f"{signal_name}: {where}; resume with: {resume_command(run_dir)}"
