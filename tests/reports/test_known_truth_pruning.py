"""Known truth for `tiframework compare`: kiri trained on pruned vs unpruned captions.

The guide's claim and `sweeps/pruned_vs_unpruned.yaml`'s question: with her traits pruned
from the captions, `[name]` alone draws them more often. A small effect, so it takes matched
seeds, each scored at the start and the end on 32 held-out images (5 sampling steps each),
without flexibility prompts or a tagger. 8 seeds per arm keeps a margin (benchmarks/RESULTS.md,
"The known-truth pruning test"; measured on a 12-seed fixture, compare over seeds 0..n-1: Holm
p 0.0001 at 12 seeds, 0.0026 at 9, 0.0075 at 8, 0.033 at 6). The two arms of one seed start
from the same vectors and score the same step-0 images, which are drawn once
(`sd.generate.generate_requests`).

Seeded and deterministic (tests/conftest.py runs every test on one CPU thread), as
test_known_truth.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from known_truth import assert_better_at_the_end, compare, kiri, train

from runs import needs_toy_weights

PRUNED, UNPRUNED = "toyworld:kiri?pruned=1", "toyworld:kiri"
PRUNING_SEEDS = 8  # detects the pruning effect with a margin (module docstring)


@pytest.fixture(scope="module")
def pruning_runs(tmp_path_factory) -> Path:
    """Pruned and unpruned captions x seeds 0-7, 120 steps (the shipped sweep's budget), 32
    eval images per run, in one population; run folders `<arm>-seed-<s>`."""
    runs = tmp_path_factory.mktemp("pruning") / "runs"
    train([[*kiri(runs, steps=120, images=32), f"data.path={path}", f"training.seed={seed}",
            "logging.experiment=pruning", f"logging.run_id={arm}-seed-{seed}"]
           for seed in range(PRUNING_SEEDS) for arm, path in (("pruned", PRUNED), ("unpruned", UNPRUNED))], runs)
    return runs


@pytest.mark.slow
@needs_toy_weights
def test_pruned_captions_make_the_traits_appear_unprompted(pruning_runs, tmp_path):
    """Pruned vs unpruned captions, 8 matched seeds, arms formed by `--by data.path`: compare
    pairs the seeds and finds that `[name]` alone shows more of kiri's traits after training
    on pruned captions, significant after Holm over every test in the report.

    Measured (2026-12-07, this fixture in a fresh clone's CI run, and the same from seeds 0-7 of
    a 12-seed fixture): +0.061 [0.033, 0.088] in attribute accuracy at the end, Holm p 0.0075
    over this report's tested rows.

    Could fail if: compare formed or paired the arms wrongly, lost the sign of the difference
    or corrected too much; or, with the probability the design leaves (the numbers are fixed
    by the seeds, so a failure would repeat on the same software and should be looked at,
    not re-rolled)."""
    result = compare([pruning_runs], "data.path", tmp_path / "cmp")
    assert_better_at_the_end(result, f"path={PRUNED}", f"path={UNPRUNED}", PRUNING_SEEDS)
