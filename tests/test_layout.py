"""The package's layout: imports flow one way (import-linter), no module outgrows its concept,
and the README's tree names exactly the subpackages that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tiframework"
MAX_LINES = 400  # STYLE.md: past ~400 lines a module is a sign to split by concept


def test_import_contracts_hold():
    # The contracts live in pyproject.toml ([tool.importlinter]); lint-imports sits beside python.
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_no_module_is_over_the_size_limit():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert {k: n for k, n in sizes.items() if n > MAX_LINES} == {}


def test_readme_tree_names_every_subpackage():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Layout"):]
    listed = set(re.findall(r"^\s*[├└]── (\w+)/", section, flags=re.M))
    actual = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert listed == actual

