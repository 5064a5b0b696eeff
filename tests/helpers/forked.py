"""Child processes for tests, forked from a server that has imported tiframework once.

Starting Python and importing the training stack (torch, Lightning, diffusers, transformers,
open_clip) costs about 12 s of CPU per process on the 2-core machines the suite runs on, and
the reliability and killed-worker tests start some twenty processes. Here each pytest worker
keeps one multiprocessing fork server that imports that stack once (`PRELOAD`); every child is
forked from it, so it starts in milliseconds, and it is still a process of its own: its own
pid to kill or signal, its own working directory, environment, rlimits, file-write hooks and
exit status, and its stdout/stderr go to files the test reads afterwards (`Child`, shaped like
`subprocess.Popen`).

What this does not test, and where that is tested instead: starting `python -m tiframework` or
the `tiframework` script itself (tests/test_from_any_directory.py, the fresh clone in
tests/reliability/test_run_folders.py, tests/test_research_check.py), and the sweep's own
worker processes (`run_sweep(workers=2)` in tests/sweeps, which start the way a user's do).

Test-only: the suite runs on the CPU. The sweep command keeps `spawn`: importing diffusers asks
CUDA for its devices (`torch.cuda.is_available()`, seen here), and CUDA does not support a child
forked from a process that has initialised it.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

PRELOAD = ["tiframework.cli", "tiframework.training.train", "tiframework.training.population.train",
           "tiframework.sweeps.worker", "tiframework.sweeps.launch", "tiframework.sweeps.runner"]


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _child(target: Callable[..., Any], args: tuple, cwd: str, env: dict[str, str], argv: list[str],
           output: str | None) -> None:
    """In the child: become the process `target` expects, then run it; an int it returns is the
    exit status (anything else: 0). atexit's functions run before the child exits, as at a normal
    interpreter exit."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = argv
    if output is not None:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            f = os.open(os.path.join(output, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(f, fd)
            os.close(f)
    try:
        code = target(*args)
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code if isinstance(code, int) else 0)


class Child:
    """A forked child with `subprocess.Popen`'s interface as the tests use it: pid, poll(),
    send_signal(), communicate() and returncode (negative: killed by that signal)."""

    def __init__(self, target: Callable[..., Any], *args: Any, cwd: Path | str | None = None,
                 env: dict[str, str] | None = None, argv: list[str] | None = None, capture: bool = True):
        self._output = tempfile.mkdtemp(prefix="forked-") if capture else None
        self._proc = _context().Process(
            target=_child, args=(target, args, str(cwd or os.getcwd()), dict(os.environ if env is None else env),
                                 list(argv or sys.argv), self._output))
        self._proc.start()
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self._proc.kill()

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout)
        return self._proc.exitcode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the child and return (stdout, stderr) as text."""
        self.wait(timeout)
        if self._output is None:
            return "", ""
        out = [Path(self._output, name).read_text(errors="replace") if Path(self._output, name).exists() else ""
               for name in ("stdout", "stderr")]
        shutil.rmtree(self._output, ignore_errors=True)
        return out[0], out[1]


def run(target: Callable[..., Any], *args: Any, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """`subprocess.run` for a forked child: wait for it (killing it after `timeout` s, then
    raising TimeoutExpired) and return its exit status and output."""
    child = Child(target, *args, **kwargs)
    try:
        stdout, stderr = child.communicate(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise
    return subprocess.CompletedProcess(kwargs.get("argv") or [], child.returncode, stdout, stderr)
