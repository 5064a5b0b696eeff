"""The statistics of a comparison: intervals over seeds, tests between arms, power, verdicts.

Pure functions over lists of per-run numbers; the arithmetic comes from scipy.stats
(t-intervals, paired and Welch t-tests, with their confidence intervals) and statsmodels
(power analysis, Holm's correction). What is ours is the wiring and the wording:

- An interval over seeds is Student's t: n = 5-10 seeds is too few for a bootstrap
  (its percentiles barely move off the sample's own extremes), and means of CLIP scores
  over a dozen images are close enough to normal for t.
- Two arms are compared with a paired t-test when every seed ran in both (runs with the
  same training seed share data order and noise, so pairing removes that shared part),
  otherwise with Welch's t-test (no equal-variance assumption).
- "No detectable difference" is not "equal": the verdict then says how many seeds per arm
  would give an 80% chance of detecting a difference of the observed size.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

LEVEL = 0.95  # interval coverage
ALPHA = 0.05  # family-wise error rate of a report's tests, after Holm's correction
POWER = 0.8
MAX_SEEDS = 10_000  # beyond this, "more than" is the honest answer
Better = Literal["higher", "lower"] | None


@dataclass(frozen=True)
class Interval:
    """Mean of per-seed values with a two-sided Student-t interval (None below 2 values)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    sd: float | None

    def as_dict(self) -> dict[str, object]:
        ci = None if self.low is None else [self.low, self.high]
        return {"mean": self.mean, "ci": ci, "n": self.n, "sd": self.sd}


def _clean(values: list[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _no_spread(sd: float, values: list[float]) -> bool:
    """An sd that is only float rounding (values equal up to the last bits) counts as 0."""
    return sd <= 1e-12 * max(1.0, *(abs(v) for v in values))


def mean_interval(values: list[float | None], level: float = LEVEL) -> Interval | None:
    """Mean and t-interval of the finite values; None when there are none."""
    xs = _clean(values)
    if not xs:
        return None
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Interval(mean, None, None, 1, None)
    sd = statistics.stdev(xs)
    if _no_spread(sd, xs):  # every seed gave the same number: the interval is that number
        return Interval(mean, mean, mean, len(xs), 0.0)
    low, high = stats.ttest_1samp(xs, 0.0).confidence_interval(level)
    return Interval(mean, float(low), float(high), len(xs), sd)


def bootstrap_interval(values: list[float | None], level: float = LEVEL, seed: int = 0) -> Interval | None:
    """Mean with a percentile-bootstrap interval over seeds: for rates, where a t-interval can cross
    0 or 1 (a leak seen in 1 run of 12); a percentile interval stays within the values' range."""
    xs = _clean(values)
    iv = mean_interval(xs, level)
    if iv is None or iv.low is None or iv.sd == 0:
        return iv
    boot = stats.bootstrap((np.asarray(xs),), np.mean, confidence_level=level, method="percentile",
                           n_resamples=2000, rng=np.random.default_rng(seed))
    low, high = boot.confidence_interval
    return Interval(iv.mean, float(low), float(high), iv.n, iv.sd)


@dataclass(frozen=True)
class PairTest:
    """Arm A minus arm B on one per-run number."""

    diff: float  # mean(A) - mean(B); for a paired test, the mean of per-seed differences
    low: float | None
    high: float | None
    p: float | None  # two-sided; None when a test is impossible (fewer than 2 runs in an arm)
    test: str  # "paired t" or "Welch t"
    effect_size: float | None  # paired: d_z = mean diff / sd of diffs; Welch: Cohen's d (pooled sd)
    effect_size_kind: str
    sd: float | None  # the sd the effect size and the power analysis use
    n_a: int
    n_b: int

    @property
    def paired(self) -> bool:
        return self.test == "paired t"


def _pooled_sd(a: list[float], b: list[float]) -> float:
    return math.sqrt(((len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b))
                     / (len(a) + len(b) - 2))


def compare_samples(a: list[float], b: list[float], paired: bool, level: float = LEVEL) -> PairTest:
    """Test A against B: paired t (a[i] and b[i] share a seed) or Welch's t.

    Degenerate data get the answer the arithmetic implies: no spread and no difference is
    p = 1 (nothing to detect); no spread but a difference is p = 0 (it is exact).
    """
    a, b = [float(x) for x in a], [float(x) for x in b]
    if paired and len(a) != len(b):
        raise ValueError(f"a paired test needs one value per seed in each arm ({len(a)} vs {len(b)})")
    test = "paired t" if paired else "Welch t"
    kind = "d_z (mean difference / sd of differences)" if paired else "Cohen's d (pooled sd)"
    if paired:
        d = [x - y for x, y in zip(a, b, strict=True)]
        diff = statistics.fmean(d) if d else math.nan
        if len(d) < 2:
            return PairTest(diff, None, None, None, test, None, kind, None, len(a), len(b))
        sd = statistics.stdev(d)
        sd = 0.0 if _no_spread(sd, a + b) else sd
        result = stats.ttest_rel(a, b) if sd > 0 else None
    else:
        diff = statistics.fmean(a) - statistics.fmean(b) if a and b else math.nan
        if len(a) < 2 or len(b) < 2:
            return PairTest(diff, None, None, None, test, None, kind, None, len(a), len(b))
        sd = _pooled_sd(a, b)
        sd = 0.0 if _no_spread(sd, a + b) else sd
        with warnings.catch_warnings():
            # One arm may be constant (e.g. a deterministic score): its variance is exactly 0,
            # which scipy flags as "nearly identical" data; Welch's test handles it.
            warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
            result = stats.ttest_ind(a, b, equal_var=False) if sd > 0 else None
    if result is None:
        if _no_spread(abs(diff), a + b):
            return PairTest(0.0, 0.0, 0.0, 1.0, test, 0.0, kind, 0.0, len(a), len(b))
        return PairTest(diff, diff, diff, 0.0, test, None, kind, 0.0, len(a), len(b))
    low, high = result.confidence_interval(level)
    return PairTest(diff, float(low), float(high), float(result.pvalue), test, diff / sd, kind, sd, len(a), len(b))


def seeds_needed(diff: float, sd: float | None, paired: bool, alpha: float = ALPHA,
                 power: float = POWER) -> int | None:
    """Seeds per arm for `power` to detect a true difference `diff` at two-sided level `alpha`,
    given the spread `sd` (of per-seed differences when paired, pooled otherwise).

    None when it cannot be said (no spread, or no difference to detect); MAX_SEEDS + 1 when
    more than MAX_SEEDS would be needed.
    """
    if sd is None or not sd > 0 or not math.isfinite(diff) or diff == 0:
        return None
    effect = abs(diff) / sd
    solver = TTestPower() if paired else TTestIndPower()
    nobs = "nobs" if paired else "nobs1"

    def power_at(n: float) -> float:
        return float(solver.power(effect_size=effect, alpha=alpha, alternative="two-sided", **{nobs: n}))

    # Bracket the answer first: statsmodels' root finder gives up (NaN) far outside it. The
    # noncentral t is NaN only for huge noncentrality, i.e. power ~ 1: `not nan < x` is True.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not power_at(2) < power:
            return 2
        if power_at(MAX_SEEDS) < power:
            return MAX_SEEDS + 1
        n = float(solver.solve_power(effect_size=effect, alpha=alpha, power=power, alternative="two-sided"))
    return math.ceil(n) if math.isfinite(n) else MAX_SEEDS + 1


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (family-wise error control); None stays None (no test)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    if idx:
        adjusted = multipletests([pvalues[i] for i in idx], alpha=ALPHA, method="holm")[1]
        for i, p in zip(idx, adjusted, strict=True):
            out[i] = float(p)
    return out


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def verdict(a: str, b: str, t: PairTest, p_adjusted: float | None, better: Better, needed: int | None,
            alpha: float = ALPHA) -> str:
    """One line: "<A> better", "<B> better" (or "higher" for a metric with no better side), or
    "no detectable difference (a difference of X would need about N seeds per arm at 80% power)"."""
    if p_adjusted is None:
        return f"not tested (needs at least 2 runs per arm; have {t.n_a} and {t.n_b})"
    if p_adjusted < alpha:
        a_higher = t.diff > 0
        if better is None:
            return f"{a if a_higher else b} higher"
        return f"{a if a_higher == (better == 'higher') else b} better"
    if t.sd == 0 and t.diff == 0:
        return "no detectable difference (identical in every run)"
    if needed is None:
        return "no detectable difference (the observed difference is 0)"
    seeds = f"more than {MAX_SEEDS:,}" if needed > MAX_SEEDS else f"about {needed}"
    return (f"no detectable difference (a difference of {_fmt(abs(t.diff))} would need {seeds} seeds "
            f"per arm at {POWER:.0%} power)")
