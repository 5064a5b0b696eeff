"""Atomic writes: a crash never leaves a half-written file or folder behind.

Temporary files and folders are made private (0600 / 0700) by `tempfile`; before one
takes its final name it gets the mode a plain `open()` / `mkdir()` would have given it
(the user's umask, or the mode of the file it replaces), so another user's A1111 or
ComfyUI can read what we write wherever the user's own files are readable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask: from /proc on Linux, else by setting it briefly (under a lock)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _publish_mode(tmp: Path, final: Path, base: int) -> None:
    """Give `tmp` the mode `final` has, or `base` minus the umask for a new file."""
    try:
        mode = stat.S_IMODE(final.stat().st_mode)
    except FileNotFoundError:
        mode = base & ~current_umask()
    os.chmod(tmp, mode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success.

    The temporary name lives in the same folder so the final `os.replace` is atomic
    on POSIX (same filesystem). On any exception the temporary file is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:
        exc.filename = str(final)  # the file the user asked for, not our temporary name
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _publish_mode(tmp_path, final, 0o666)
        os.replace(tmp_path, final)
    except OSError as exc:
        # A full disk shows up on the temporary file (or on no file at all): name the real one.
        if exc.filename is None or str(exc.filename) == str(tmp_path):
            exc.filename = str(final)
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], keep_concurrent: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only on success.

    An existing `path` is swapped out and removed after the new folder is in place,
    so readers see either the old folder or the complete new one.

    `keep_concurrent`, for caches whose content is fixed by their name: if `path` appeared
    while this folder was being written (another process built the same thing, e.g. two test
    workers or sweep workers starting at once), that one is kept and this one dropped, so a
    process already reading it never sees it swapped out from under it.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    existed = final.exists()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        _publish_mode(tmp, final, 0o777)
        if keep_concurrent and not existed and final.exists():
            pass  # built meanwhile by another process: keep theirs (tmp is removed below)
        elif final.exists():
            old = final.with_name(f".{final.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            try:
                os.replace(tmp, final)
            except OSError:
                # Another process published `path` between the check and the rename (a
                # non-empty folder cannot be replaced): keep theirs when asked to.
                if not (keep_concurrent and final.is_dir()):
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
