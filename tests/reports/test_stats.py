"""The comparison's statistics against known answers: Student's sleep data (R's `t.test`
documentation), Cohen's sample-size table, Holm's procedure by hand, and the verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tiframework.reports import stats

# Student (1908) / Cushny & Peebles: extra hours of sleep with two drugs, ten patients.
# R: t.test(extra ~ group, data = sleep[, paired = TRUE]) gives the numbers below.
DRUG1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_t_interval_of_a_mean():
    diffs = [b - a for a, b in zip(DRUG1, DRUG2, strict=True)]
    iv = stats.mean_interval(diffs)
    assert iv.mean == pytest.approx(1.58) and iv.n == 10
    assert (iv.low, iv.high) == pytest.approx((0.7001142, 2.4598858), rel=1e-6)  # R's one-sample interval
    assert stats.mean_interval([3.0]) == stats.Interval(3.0, None, None, 1, None)
    assert stats.mean_interval([2.0, 2.0, 2.0]).as_dict() == {"mean": 2.0, "ci": [2.0, 2.0], "n": 3, "sd": 0.0}
    assert stats.mean_interval([None, float("nan")]) is None


def test_paired_t_test_matches_r():
    t = stats.compare_samples(DRUG1, DRUG2, paired=True)
    assert t.test == "paired t" and t.paired
    assert t.diff == pytest.approx(-1.58)
    assert t.p == pytest.approx(0.002833, rel=1e-3)  # R: t = -4.0621, df = 9, p-value = 0.002833
    assert (t.low, t.high) == pytest.approx((-2.4598858, -0.7001142), rel=1e-6)
    assert t.effect_size == pytest.approx(-1.58 / np.std(np.subtract(DRUG1, DRUG2), ddof=1))


def test_welch_t_test_matches_r():
    t = stats.compare_samples(DRUG1, DRUG2, paired=False)
    assert t.test == "Welch t" and t.diff == pytest.approx(0.75 - 2.33)
    assert t.p == pytest.approx(0.07939, rel=1e-3)  # R: t = -1.8608, df = 17.776, p-value = 0.07939
    assert (t.low, t.high) == pytest.approx((-3.3654832, 0.2054832), rel=1e-6)
    pooled = math.sqrt((np.var(DRUG1, ddof=1) + np.var(DRUG2, ddof=1)) / 2)
    assert t.effect_size == pytest.approx(-1.58 / pooled)


def test_degenerate_samples():
    same = stats.compare_samples([0.3, 0.3, 0.3], [0.3, 0.3, 0.3], paired=True)
    assert (same.p, same.diff, same.low, same.high, same.effect_size) == (1.0, 0.0, 0.0, 0.0, 0.0)
    exact = stats.compare_samples([0.4, 0.4], [0.3, 0.3], paired=False)
    assert exact.p == 0.0 and exact.diff == pytest.approx(0.1) and exact.effect_size is None
    lone = stats.compare_samples([0.4], [0.3, 0.2], paired=False)
    assert lone.p is None and lone.low is None and lone.diff == pytest.approx(0.15)
    with pytest.raises(ValueError, match="one value per seed"):
        stats.compare_samples([1.0, 2.0], [1.0], paired=True)


def test_seeds_needed_matches_cohens_table():
    # Cohen (1988): d = 0.5, alpha 0.05 two-sided, power 0.8 -> 64 per group; 34 pairs when paired.
    assert stats.seeds_needed(0.5, 1.0, paired=False) == 64
    assert stats.seeds_needed(-0.5, 1.0, paired=True) == 34
    assert stats.seeds_needed(0.8, 1.0, paired=False) == 26  # Cohen: 26 for d = 0.8
    stricter = stats.seeds_needed(0.5, 1.0, paired=False, alpha=0.005)
    assert stricter > 64
    assert stats.seeds_needed(0.0, 1.0, paired=False) is None
    assert stats.seeds_needed(0.1, 0.0, paired=False) is None and stats.seeds_needed(0.1, None, paired=True) is None
    assert stats.seeds_needed(1e-6, 1.0, paired=False) == stats.MAX_SEEDS + 1
    assert stats.seeds_needed(50.0, 1.0, paired=False) == 2  # never fewer than an interval needs


def test_holm_by_hand():
    # Sorted p: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04) = 0.06.
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([None, 0.02, None, 0.5]) == [None, pytest.approx(0.04), None, pytest.approx(0.5)]
    assert stats.holm([None]) == [None]


def test_identical_arms_give_no_detectable_difference():
    rng = np.random.default_rng(0)
    runs = list(rng.normal(0.35, 0.02, 8))
    t = stats.compare_samples(runs, runs, paired=True)
    assert stats.verdict("a", "b", t, t.p, "higher", None) == "no detectable difference (identical in every run)"
    # The same spread of scores in another order, 0.002 higher: a gap far inside the noise.
    a = [0.33, 0.35, 0.37, 0.34, 0.36, 0.35, 0.32, 0.38]
    b = [x + 0.002 for x in (0.36, 0.34, 0.35, 0.33, 0.37, 0.38, 0.35, 0.32)]
    t = stats.compare_samples(a, b, paired=False)
    needed = stats.seeds_needed(t.diff, t.sd, t.paired)
    text = stats.verdict("a", "b", t, t.p, "higher", needed)
    assert t.diff == pytest.approx(-0.002) and t.p > 0.5 and needed > 1000
    assert text == f"no detectable difference (a difference of {abs(t.diff):.3g} would need about {needed} seeds " \
                   "per arm at 80% power)"


@pytest.mark.parametrize("better, expected", [("higher", "b better"), ("lower", "a better"), (None, "b higher")])
def test_a_clear_shift_is_detected_with_the_right_sign(better, expected):
    rng = np.random.default_rng(1)
    a = list(rng.normal(0.30, 0.01, 6))
    b = [x + 0.05 + e for x, e in zip(a, rng.normal(0, 0.005, 6), strict=True)]  # b is 0.05 higher
    t = stats.compare_samples(a, b, paired=True)
    assert t.diff == pytest.approx(-0.05, abs=0.01) and t.high < 0 and t.p < 1e-4
    assert stats.verdict("a", "b", t, t.p, better, None) == expected


def test_verdict_wording_for_untestable_and_huge_requirements():
    lone = stats.compare_samples([0.4], [0.3, 0.2], paired=False)
    assert stats.verdict("a", "b", lone, None, "higher", None) == \
        "not tested (needs at least 2 runs per arm; have 1 and 2)"
    t = stats.compare_samples([0.30, 0.32, 0.31], [0.31, 0.30, 0.32], paired=False)
    assert "more than 10,000 seeds" in stats.verdict("a", "b", t, 0.9, "higher", stats.MAX_SEEDS + 1)
