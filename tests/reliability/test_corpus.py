"""The bad-input corpus as a whole: every module of tests/reliability/ adds its cases to
`reliability.CORPUS` with `cases()`, and the README's Reliability section states how many there
are, so a fix that adds a case shows up there."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from reliability import CORPUS, ROOT

HERE = Path(__file__).resolve().parent


def test_the_readme_states_the_corpus_size():
    for path in sorted(HERE.glob("test_*.py")):  # each module registers its cases on import
        if path.name != Path(__file__).name:
            spec = importlib.util.spec_from_file_location(f"_corpus_{path.stem}", path)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Reliability"):]
    assert f"**{len(CORPUS)} bad inputs**" in section.split("\n## ")[0]
