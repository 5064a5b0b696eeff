"""Running `tiframework` the hard way for the reliability tests: in a process of its own that can
be killed, that SIGKILLs itself in the middle of a save, that runs into a file-size limit (a full
disk) or that cannot override file permissions (a read-only folder, also when tests run as root).

`tif()` forks that process from a server that has imported tiframework once (tests/helpers/
forked.py: a fork costs milliseconds, a fresh Python with the training stack ~12 s of CPU). The
same, from a shell:

    python tests/helpers/reliability.py [--kill-writing NAME] [--fail-writing NAME] [--max-file-bytes N]
                                        [--no-override] -- ARGS...

It also holds the bad-input corpus (`CORPUS`, filled by `cases()` in each test module of
tests/reliability/) and the checks every case makes: one line, nothing lost.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import hashlib
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import forked
from forked import Child

ROOT = Path(__file__).resolve().parents[2]
CORPUS: dict[str, str] = {}


def cases(group: dict[str, str]) -> list[str]:
    CORPUS.update(group)
    return list(group)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_nothing_lost(root: Path, before: dict[str, str]) -> None:
    after = snapshot(root)
    assert {k: after.get(k) for k in before} == before, "an existing file changed or vanished"
    assert not [k for k in after if re.search(r"(^|/)\.[^/]*\.tmp$", k)], "a half-written file was left"


def one_line(err: BaseException | str, *fragments: str) -> str:
    text = str(err).removeprefix("error: ").rstrip("\n")
    assert "\n" not in text, text
    for fragment in fragments:
        assert re.search(fragment, text), (fragment, text)
    return text


def error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and stderr.rstrip().endswith(lines[0]), stderr[-2000:]
    return lines[0]


# CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: what lets root write into a 0555 folder.
_OVERRIDE_CAPS = (1, 2, 3)
_CAPABILITY_VERSION_3 = 0x20080522  # linux/capability.h: two 32-bit words per set


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_root_override() -> None:
    """Make file permissions bind this process even when it runs as root: the capabilities that
    override them leave its effective and permitted sets (capset(2)), at once and for good."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for cap in _OVERRIDE_CAPS:
        data[cap // 32].effective &= ~(1 << cap % 32)
        data[cap // 32].permitted &= ~(1 << cap % 32)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


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


def fail_writing_as_on_a_full_disk(name: str) -> None:
    """Make the atomic write of a file called `name` fail as on a full disk (ENOSPC), as late as a
    real one would: after the earlier files, so what was saved before must survive."""
    from tiframework import fileio

    publish = fileio._publish_mode

    def disk_full(tmp: Path, final: Path, base: int) -> None:
        if final.name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        publish(tmp, final, base)

    fileio._publish_mode = disk_full


def tif(*args: str, cwd: Path, kill_writing: str | None = None, max_file_bytes: int | None = None,
        no_override: bool = False, wait: bool = True, timeout: float = 600,
        fail_writing: str | None = None) -> subprocess.CompletedProcess | Child:
    """Run `tiframework ARGS` in a forked process of its own (see the module docstring);
    `wait=False` returns the running process."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    hooks = (list(args), kill_writing, fail_writing, max_file_bytes, no_override)
    kwargs = {"cwd": cwd, "env": env, "argv": ["tiframework", *args]}
    return forked.run(_run, *hooks, timeout=timeout, **kwargs) if wait else Child(_run, *hooks, **kwargs)


def _run(args: list[str], kill_writing: str | None, fail_writing: str | None, max_file_bytes: int | None,
         no_override: bool = False) -> int:
    """`tiframework ARGS` in this process, with the hooks the test asked for."""
    if no_override:
        drop_root_override()
    if max_file_bytes:
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as on a full disk.
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    if kill_writing:
        kill_while_writing(kill_writing)
    if fail_writing:
        fail_writing_as_on_a_full_disk(fail_writing)
    from tiframework.cli import main

    return main(args)


def _main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-writing")
    parser.add_argument("--fail-writing")
    parser.add_argument("--max-file-bytes", type=int)
    parser.add_argument("--no-override", action="store_true")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    return _run(args, opts.kill_writing, opts.fail_writing, opts.max_file_bytes, opts.no_override)


if __name__ == "__main__":
    sys.exit(_main())
