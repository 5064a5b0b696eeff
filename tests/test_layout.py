"""The package's layout: imports flow one way (import-linter), no module outgrows its concept,
and the README's tree names exactly the subpackages that exist."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tiframework"
MAX_LINES = 400  # the team style guide: past ~400 lines a module is a sign to split by concept


def test_import_contracts_hold():
    # The contracts live in pyproject.toml ([tool.importlinter]); lint-imports sits beside python.
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_the_readers_and_the_sweep_machinery_load_no_training_stack():
    # `compare`, the sweep reports and a sweep worker's own machinery read files and studies:
    # they load torch only through a runner (sweeps.runner), so a spawned worker whose runner
    # needs none starts in about a second, and `compare` never pays for CLIP.
    light = ["tiframework.sweeps.launch", "tiframework.reports.compare.report", "tiframework.reports.sweep.report"]
    probe = (f"import sys; import {', '.join(light)}; "
             "print(sorted(m for m in ('torch', 'diffusers', 'pytorch_lightning', 'open_clip') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_no_module_is_over_the_size_limit():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert {k: n for k, n in sizes.items() if n > MAX_LINES} == {}


def _packages() -> list[Path]:
    """Subpackages that hold code (a folder with only `__init__.py` ships data files, e.g. clip_configs/)."""
    return sorted(p.parent for p in PACKAGE.rglob("__init__.py")
                  if p.parent != PACKAGE and len(list(p.parent.glob("*.py"))) > 1)


def test_package_docstrings_name_every_module():
    # A newcomer reads a package's docstring to find where a change belongs: it must name
    # every module and subpackage in it (`name` or `name/`), so a new room cannot hide.
    missing = {}
    for pkg in _packages():
        doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text(encoding="utf-8"))) or ""
        named = set(re.findall(r"`(\w+)/?`", doc)) | set(re.findall(r"`(\w+)/", doc))
        members = {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"}
        members |= {p.parent.name for p in pkg.glob("*/__init__.py")}
        if members - named:
            missing[pkg.relative_to(ROOT).as_posix()] = sorted(members - named)
    assert missing == {}


def test_readme_tree_lists_each_subpackage_once():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Layout"):]
    tree = section[section.index("```"):section.index("```", section.index("```") + 3)]
    # Nested rooms are written `├── training/population/`: the path from the package root.
    listed = re.findall(r"[├└]── ([\w/]+)/", tree)
    actual = sorted(p.relative_to(PACKAGE).as_posix() for p in _packages())
    assert sorted(listed) == actual, "the README's Layout tree must list each subpackage exactly once"
