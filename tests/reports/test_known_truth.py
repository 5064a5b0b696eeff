"""Known-truth checks of `tiframework compare` on real toy-world training (CPU).

The statistics are tested on made-up numbers in test_stats / test_compare; these tests train
real embeddings on the committed toy world and put them through the user-facing command
(`compare` on the run folders training wrote), where the truth is known by construction:

- two arms with the same settings, told apart only by their training seeds: every verdict
  must be "no detectable difference";
- the quickstart's learning rate against one 20 times smaller, 40 steps each: the slow arm's
  vectors barely leave the init text, so the quickstart's `[name]` images must show more of
  kiri's traits (attribute accuracy, the toy world's ground truth), significantly after Holm.

The third, pruned vs unpruned captions, is in test_known_truth_pruning.py (its own module, so
the two populations train on different xdist workers at once).

The fixture trains its runs once for the module, as one population (`train_population`,
each member as if trained alone). Training is seeded and deterministic on one CPU thread
(tests/conftest.py sets one for every test), so each test gives the same numbers every time
it runs on the same software; what could make one fail is listed with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from known_truth import ACC, FAST, SLOW, assert_better_at_the_end, compare, kiri, train

from runs import needs_toy_weights


@pytest.fixture(scope="module")
def kiri_runs(tmp_path_factory) -> Path:
    """One population: the quickstart's rate with seeds 0-5 (0-2 in experiment "same-a", 3-5
    in "same-b") and the slow rate with seeds 0-5 (experiment "slow"); run folders
    `<experiment>/<rate>-seed-<s>` (logging.* never makes runs differ)."""
    runs = tmp_path_factory.mktemp("known-truth") / "runs"
    members = [(FAST, seed, "same-a" if seed < 3 else "same-b") for seed in range(6)]
    members += [(SLOW, seed, "slow") for seed in range(6)]
    train([[*kiri(runs), f"training.learning_rate={lr}", f"training.seed={seed}", f"logging.experiment={experiment}",
            f"logging.run_id=lr{lr}-seed-{seed}"] for lr, seed, experiment in members], runs)
    return runs


@pytest.mark.slow
@needs_toy_weights
def test_two_arms_with_the_same_settings_show_no_detectable_difference(kiri_runs, tmp_path):
    """Seeds 0-2 against seeds 3-5 of the same settings, arms formed by `--by
    logging.experiment`, a key that changes nothing but the folder. Unmatched seeds, so
    compare uses Welch's test.

    Measured (2026-12-07, 8 eval images per run): every Holm p >= 0.94 (the smallest raw p,
    attribute accuracy's, 0.16).

    Could fail if: compare pooled or paired runs wrongly, ignored the spread between seeds
    (calling seed noise a difference), or Holm were not applied; or, by chance, with the
    probability Holm allows (at most 5% for the whole report; the numbers are fixed by the
    seeds, so a failure would repeat and should be looked at, not re-rolled)."""
    result = compare([kiri_runs / "same-a", kiri_runs / "same-b"], "logging.experiment", tmp_path / "cmp")
    assert [(a["name"], a["n"]) for a in result["arms"]] == [("experiment=same-a", 3), ("experiment=same-b", 3)]
    tested = [p for p in result["pairs"] if p["p"] is not None]
    metrics = {p["metric"] for p in tested}
    assert {"eval/clip_fidelity", ACC, "eval/fried"} <= metrics
    # Unmatched seeds: Welch's t for every score; the share of runs that reached a plateau is a count (Fisher).
    assert all(p["test"] == ("Fisher exact" if p["metric"] == "plateau_reached" else "Welch t") for p in tested)
    # The seeds do differ (a real spread, not identical runs), and no difference is called.
    assert all(p["sd"] > 0 for p in tested if p["metric"] != "plateau_reached")
    assert [p["verdict"] for p in tested if not p["verdict"].startswith(("no detectable difference", "no difference"))] == []
    assert all(p["p_adjusted"] >= 0.05 for p in tested if p["in_family"])


@pytest.mark.slow
@needs_toy_weights
def test_a_known_difference_is_detected_with_its_sign(kiri_runs, tmp_path):
    """The quickstart's rate vs 20 times smaller, seeds 0-5 in both, arms formed by `--by
    training.learning_rate`: compare pairs the seeds (each pair shares data order, noise and
    eval images) and calls the quickstart's rate better on attribute accuracy at the end.

    Could fail if: compare formed or paired the arms wrongly, lost the sign of the difference
    or corrected too much; or if 40 steps at lr 0.02 stopped lifting kiri's traits well above
    what lr 0.001 leaves near the init text (measured 2026-12-07, 8 eval images per run, 5
    sampling steps each: +0.136 [0.099, 0.173], Holm p 0.0014 over this report's tests; with 16
    images it was +0.157, Holm p 7e-5)."""
    result = compare([kiri_runs], "training.learning_rate", tmp_path / "cmp")
    assert_better_at_the_end(result, f"learning_rate={FAST}", f"learning_rate={SLOW}", 6)
