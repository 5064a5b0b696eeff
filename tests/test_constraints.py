"""The dependency lock: `constraints.txt` pins every package the install pulls in, within the
bounds `pyproject.toml` sets, the environment running the tests holds exactly those versions,
and the README's install-and-test command is the one CI runs (both with the lock)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"


def pins() -> dict[str, str]:
    found = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            found[canonicalize_name(name)] = version.strip()
    return found


def declared() -> list[Requirement]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the lock is checked there
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def test_the_lock_pins_every_dependency_within_its_bounds():
    locked = pins()
    for req in declared():
        version = locked.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name}: not in constraints.txt; run .ci/update_constraints.py"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} breaks {req}"
    assert "tiframework" not in locked


def test_the_installed_versions_are_the_locked_ones():
    spec = importlib.util.spec_from_file_location("update_constraints", ROOT / ".ci" / "update_constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    installed = module.closure()  # what this environment's install pulled in, with versions
    locked = pins()
    assert {k: v for k, v in installed.items() if locked.get(k) != v} == {}, \
        "installed versions differ from constraints.txt (reinstall with -c constraints.txt, or update the lock)"
    wrong = [name for name in locked if name not in installed and _installed(name)]
    assert wrong == [], f"locked but no longer required: {wrong}; update the lock"


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False  # e.g. a Linux-only CUDA library on another platform: the lock may still list it
    return True


def test_ci_runs_the_readmes_test_command_with_the_lock():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [command] = re.findall(r"^# 2\. install everything and run the tests\n(.+)$", readme, flags=re.M)
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
                if ln and not ln.startswith("#")]
    assert ci_lines[-1] == command
    assert "-c constraints.txt" in command and shlex.split(command)
