"""Two arms on per-seed numbers (`reports.compare.pairs`): pairing by seed, Holm over the rows, verdicts."""

from __future__ import annotations

import pytest
from test_stats import DRUG1, DRUG2

from tiframework.reports.compare.pairs import conclude, matched, pair_row, paired_or_welch


def test_runs_pair_up_by_seed_whatever_their_order():
    a = list(enumerate(DRUG2))
    b = list(reversed(list(enumerate(DRUG1))))  # the same seeds, listed the other way round
    t = paired_or_welch(a, b)
    assert t.paired and t.diff == pytest.approx(1.58) and t.p == pytest.approx(0.002833, rel=1e-3)


def test_unmatched_or_missing_values_fall_back_to_welch():
    assert not matched([0, 1, 2], [0, 1]) and not matched([0, 0], [0, 0]) and not matched([None, 1], [None, 1])
    a = [(s, v) for s, v in enumerate(DRUG2)]
    b = [(s, v) for s, v in enumerate(DRUG1)]
    b[3] = (3, None)  # one run did not measure it
    t = paired_or_welch(a, b)
    assert not t.paired and (t.n_a, t.n_b) == (10, 9)


def test_conclude_corrects_over_every_row_and_words_the_verdicts():
    clear = paired_or_welch(list(enumerate(DRUG2)), list(enumerate(DRUG1)))
    noise = paired_or_welch([(0, 0.30), (1, 0.33), (2, 0.31)], [(0, 0.31), (1, 0.30), (2, 0.32)])
    rows = conclude([pair_row("drug2", "drug1", "sleep", "final", clear),
                     pair_row("drug2", "drug1", "noise", "final", noise, better="lower")])
    assert rows[0]["p_adjusted"] == pytest.approx(2 * rows[0]["p"]) and rows[0]["verdict"] == "drug2 better"
    assert rows[1]["verdict"].startswith("no detectable difference (a difference of ")
    assert rows[1]["seeds_needed"] > 3 and "_test" not in rows[0] and "_better" not in rows[1]
