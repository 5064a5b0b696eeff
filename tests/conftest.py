"""Shared fixtures for the whole test-suite.

`tiny_parts` is built once per session (a few seconds on 2 cores): treat it as
read-only. A test that changes the model (resizes the token table, loads a textual
inversion into it, moves it to another dtype) builds its own with `make_tiny_parts()`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# Test utilities (`ldm_export`, `wandb_reader`, `runs`) live in tests/helpers; make them importable.
sys.path.insert(0, str(Path(__file__).parent / "helpers"))


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
