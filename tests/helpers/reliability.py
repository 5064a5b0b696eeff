"""Running `tiframework` the hard way for the reliability tests: in a subprocess that can be
killed, that SIGKILLs itself in the middle of a save, that runs into a file-size limit (a full
disk) or that cannot override file permissions (a read-only folder, also when tests run as root).

    python tests/helpers/reliability.py [--kill-writing NAME] [--max-file-bytes N] [--no-override] -- ARGS...
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_PR_CAPBSET_DROP = 24
# CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: what lets root write into a 0555 folder.
_OVERRIDE_CAPS = (1, 2, 3)


def drop_root_override() -> None:
    """Make file permissions bind this process even when it runs as root (bounding set, then exec)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _OVERRIDE_CAPS:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def kill_while_writing(name: str) -> None:
    """SIGKILL this process when an atomic write of a file called `name` has written half of it."""
    from tiframework import fileio

    publish = fileio._publish_mode

    def half_then_die(tmp: Path, final: Path, base: int) -> None:
        if final.name == name:
            with open(tmp, "r+b") as fh:
                fh.truncate(tmp.stat().st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        publish(tmp, final, base)

    fileio._publish_mode = half_then_die


def tif(*args: str, cwd: Path, kill_writing: str | None = None, max_file_bytes: int | None = None,
        no_override: bool = False, wait: bool = True, timeout: float = 600) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run `tiframework ARGS` in a subprocess through this file (see the module docstring)."""
    cmd = [sys.executable, __file__]
    if kill_writing:
        cmd += ["--kill-writing", kill_writing]
    if max_file_bytes:
        cmd += ["--max-file-bytes", str(max_file_bytes)]
    if no_override:
        cmd += ["--no-override"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    kwargs = {"cwd": cwd, "env": env, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    if not wait:
        return subprocess.Popen([*cmd, "--", *args], **kwargs)
    return subprocess.run([*cmd, "--", *args], timeout=timeout, **kwargs)


def _main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-writing")
    parser.add_argument("--max-file-bytes", type=int)
    parser.add_argument("--no-override", action="store_true")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    if opts.no_override:
        drop_root_override()
        again = [sys.executable, __file__]
        if opts.kill_writing:
            again += ["--kill-writing", opts.kill_writing]
        if opts.max_file_bytes:
            again += ["--max-file-bytes", str(opts.max_file_bytes)]
        os.execv(sys.executable, [*again, "--", *args])  # the dropped capabilities take effect at exec
    if opts.max_file_bytes:
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as on a full disk.
        resource.setrlimit(resource.RLIMIT_FSIZE, (opts.max_file_bytes, opts.max_file_bytes))
    if opts.kill_writing:
        kill_while_writing(opts.kill_writing)
    from tiframework.cli import main

    return main(args)

if __name__ == "__main__":
    sys.exit(_main())
