"""compare reads each run's provenance.json: an arm never pools runs trained on different data,
and arms that ran different code are compared with a warning and a named confounder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiframework.errors import UserError
from tiframework.reports.compare.runset import Arm, Run, check_provenance


def run(name: str, data: str = "sha256:aa", commit: str = "c0ffee", dirty: bool = False) -> Run:
    origin = {"code": {"tiframework": "0.1.0", "git_commit": commit, "git_dirty": dirty},
              "dataset": {"path": "/data", "hash": data}}
    return Run(Path(name), {}, [], {}, provenance=origin)


def test_an_arm_with_two_datasets_is_refused():
    arms = [Arm("a", {}, [run("a/s0"), run("a/s1", data="sha256:bb")]), Arm("b", {}, [run("b/s0")])]
    with pytest.raises(UserError, match=r"arm a: its runs trained on different data .*a/s1: sha256:bb"):
        check_provenance(arms)


def test_arms_on_different_code_are_compared_with_a_confounder(caplog):
    arms = [Arm("a", {}, [run("a/s0"), run("a/s1")]), Arm("b", {}, [run("b/s0", commit="beef", dirty=True)])]
    assert check_provenance(arms) == {"code version": {"a": "0.1.0 @ c0ffee", "b": "0.1.0 @ beef+dirty"}}
    assert "the arms ran different code" in caplog.text


def test_same_code_and_data_and_runs_without_provenance_pass():
    assert check_provenance([Arm("a", {}, [run("a/s0")]), Arm("b", {}, [run("b/s0", data="sha256:bb")])]) == {}
    old = Run(Path("old"), {}, [], {})  # made before provenance was written: its data is not judged
    assert check_provenance([Arm("a", {}, [old, run("a/s1")])]) == {}
