"""Atomic writes: whole files or none, with the modes a plain open()/mkdir() would give."""

from __future__ import annotations

import os
import stat

import pytest

from tiframework.fileio import atomic_dir, atomic_path, atomic_write_text, current_umask


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_and_folders_follow_the_umask(tmp_path, umask_027):
    assert current_umask() == 0o027
    atomic_write_text(tmp_path / "a.txt", "x")
    assert mode(tmp_path / "a.txt") == 0o640  # not the temporary file's 0600
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("y")
    assert mode(tmp_path / "d") == 0o750  # not mkdtemp's 0700


def test_a_replaced_file_keeps_its_mode(tmp_path, umask_027):
    target = tmp_path / "b.txt"
    target.write_text("old")
    target.chmod(0o604)
    atomic_write_text(target, "new")
    assert (target.read_text(), mode(target)) == ("new", 0o604)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "c.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["c.txt"]


def test_a_cache_built_twice_at_once_keeps_the_first_one_published(tmp_path):
    """Two processes build the same cache folder at once (test or sweep workers starting
    together): with keep_concurrent the one published first stays in place, never swapped
    out under a reader; without it the later one replaces it (a rebuild of a stale folder)."""
    target = tmp_path / "cache"
    with atomic_dir(target, keep_concurrent=True) as tmp:
        (tmp / "f").write_text("second")
        with atomic_dir(target, keep_concurrent=True) as first:  # the other process, finishing first
            (first / "f").write_text("first")
        inode = target.stat().st_ino
    assert (target / "f").read_text() == "first" and target.stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # no temporary folder left
    with atomic_dir(target, keep_concurrent=True) as tmp:  # it existed at the start: a rebuild replaces it
        (tmp / "f").write_text("rebuilt")
    assert (target / "f").read_text() == "rebuilt"
    plain = tmp_path / "plain"
    with atomic_dir(plain) as tmp:
        (tmp / "f").write_text("late")
        with atomic_dir(plain) as first:
            (first / "f").write_text("first")
    assert (plain / "f").read_text() == "late"
