"""Shared fixtures for the whole test-suite.

`tiny_parts` is built once per session (a few seconds on 2 cores): treat it as
read-only. A test that changes the model (resizes the token table, loads a textual
inversion into it, moves it to another dtype) builds its own with `make_tiny_parts()`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# Test utilities (`ldm_export`, `wandb_reader`, `runs`) live in tests/helpers; make them importable.
sys.path.insert(0, str(Path(__file__).parent / "helpers"))

# The suite runs on pytest-xdist workers (pyproject's addopts: `-n auto`), one per core. Every
# test, and every command a test starts, computes on one thread: two workers with a thread per
# core each would fight over the cores (spinning OpenMP threads), and the seeded known-truth
# runs then never depend on the machine's core count, in the whole suite or run alone. Set
# before torch is imported.
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

# The modules with the longest shared fixtures (measured with --durations), longest first. xdist
# (`--dist loadscope --no-loadscope-reorder`) hands out whole modules in collection order and
# deals each worker its first two at once: the first module alone outlasts the rest of a worker's
# share, so the second module it gets is a short one, and the other worker takes the other
# known-truth checks while the many short tests fill in behind.
LONGEST_FIRST = (
    "tests/reports/test_known_truth_pruning.py",
    "tests/reports/test_known_truth.py",
    "tests/test_layout.py",  # short: the first worker's second module
    "tests/sweeps/test_confirm_known_truth.py",
    "tests/test_research_check.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules in LONGEST_FIRST first, in its order; then the slow tests; then the rest."""
    root = Path(str(config.rootpath))

    def order(item: pytest.Item) -> tuple[int, bool]:
        module = item.path.relative_to(root).as_posix()
        first = LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
        return first, item.get_closest_marker("slow") is None

    items.sort(key=order)


@pytest.fixture(scope="session")
def make_tiny_parts() -> Callable[..., object]:
    """A factory for fresh tiny-preset parts: `make_tiny_parts(seed=0)`.

    The same seed gives bit-identical weights, so a fresh copy equals `tiny_parts`.
    """
    from tiframework.config import ModelConfig
    from tiframework.sd.models import load_model

    def build(seed: int = 0):
        return load_model(ModelConfig(preset="tiny", seed=seed))

    return build


@pytest.fixture(scope="session")
def tiny_parts(make_tiny_parts):
    """The tiny preset (random weights, seed 0), shared by the session: do not mutate it."""
    return make_tiny_parts()
