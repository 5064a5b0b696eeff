"""Running `tiframework` the hard way for the reliability tests: in a process of its own that can
be killed, that SIGKILLs itself in the middle of a save, that runs into a file-size limit (a full
disk) or that cannot override file permissions (a read-only folder, also when tests run as root).

`tif()` forks that process from a server that has imported tiframework once (tests/helpers/
forked.py: a fork costs milliseconds, a fresh Python with the training stack ~12 s of CPU); the
one that must give up root's file-permission override starts a fresh Python, because dropped
capabilities take effect at exec:

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
        fail_writing: str | None = None) -> subprocess.CompletedProcess | subprocess.Popen | Child:
    """Run `tiframework ARGS` in a process of its own (see the module docstring): forked, or with
    `no_override` a fresh Python through this file. `wait=False` returns the running process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    if not no_override:
        hooks = (list(args), kill_writing, fail_writing, max_file_bytes)
        kwargs = {"cwd": cwd, "env": env, "argv": ["tiframework", *args]}
        return forked.run(_run, *hooks, timeout=timeout, **kwargs) if wait else Child(_run, *hooks, **kwargs)
    cmd = [sys.executable, __file__, "--no-override"]
    if kill_writing:
        cmd += ["--kill-writing", kill_writing]
    if fail_writing:
        cmd += ["--fail-writing", fail_writing]
    if max_file_bytes:
        cmd += ["--max-file-bytes", str(max_file_bytes)]
    kwargs = {"cwd": cwd, "env": env, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    if not wait:
        return subprocess.Popen([*cmd, "--", *args], **kwargs)
    return subprocess.run([*cmd, "--", *args], timeout=timeout, **kwargs)


def _run(args: list[str], kill_writing: str | None, fail_writing: str | None, max_file_bytes: int | None) -> int:
    """`tiframework ARGS` in this process, with the hooks the test asked for."""
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
    if opts.no_override:
        drop_root_override()
        again = [sys.executable, __file__]
        if opts.kill_writing:
            again += ["--kill-writing", opts.kill_writing]
        if opts.fail_writing:
            again += ["--fail-writing", opts.fail_writing]
        if opts.max_file_bytes:
            again += ["--max-file-bytes", str(opts.max_file_bytes)]
        os.execv(sys.executable, [*again, "--", *args])  # the dropped capabilities take effect at exec
    return _run(args, opts.kill_writing, opts.fail_writing, opts.max_file_bytes)


if __name__ == "__main__":
    sys.exit(_main())
