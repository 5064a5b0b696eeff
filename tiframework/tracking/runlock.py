"""One writer per run folder: an advisory `fcntl` lock held for the life of a run.

Two commands given the same `logging.run_id` (or resuming the same run) at once would
interleave their rows in one metrics.csv and overwrite each other's checkpoints. The lock
is on `<run>/.lock`, taken without waiting; the kernel drops it when the process dies (a
`kill -9` included), so a stale lock never blocks a resume. The file itself stays: removing
a lock file while others may open it is what makes lock files race.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tiframework.errors import UserError

LOCK_NAME = ".lock"


class RunLock:
    """An exclusive lock on a run folder; `release()` (or process exit) drops it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._fd: int | None = None

    @property
    def file(self) -> Path:
        return self.folder / LOCK_NAME

    def _locked(self) -> int:
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.folder}: another tiframework run ({holder}) is writing this run folder; "
                            "wait for it to finish or stop it, or give this run a new logging.run_id") from None
        return fd

    def acquire(self) -> RunLock:
        fd = self._locked()
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self._fd = fd
        return self

    def probe(self) -> None:
        """Raise the same error `acquire` would, without keeping the lock (an early check)."""
        if self.file.is_file():
            os.close(self._locked())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
