"""Two arms compared on named per-seed numbers: the test, then Holm and the verdicts.

`compare` runs every pair of arms through this on every metric; anything else that has
per-seed numbers for two arms (e.g. a benchmark's per-trait rates) can use it the same way:

    rows = [pair_row("pruned", "unpruned", trait, "final", paired_or_welch(pruned[trait], unpruned[trait]))
            for trait in traits]
    conclude(rows)   # Holm over the rows, seeds needed, verdicts

where `pruned[trait]` is a list of `(seed, value)`.
"""

from __future__ import annotations

import math
from typing import Any

from scipy.stats import fisher_exact
from statsmodels.stats.proportion import confint_proportions_2indep

from tiframework.reports import stats

FISHER = "Fisher exact"

SeedValues = list[tuple[Any, float | None]]  # (training seed, value) per run; None: not measured


def matched(a: list[Any], b: list[Any]) -> bool:
    """Every seed ran in both arms, once (at least two): the runs pair up by seed."""
    return None not in a and len(set(a)) == len(a) and sorted(a) == sorted(b) and len(a) >= 2


def paired_or_welch(a: SeedValues, b: SeedValues) -> stats.PairTest:
    """A minus B: a paired t-test by seed when the arms' seeds match, else Welch's."""
    a = [(s, float(v)) for s, v in a if v is not None and math.isfinite(float(v))]
    b = [(s, float(v)) for s, v in b if v is not None and math.isfinite(float(v))]
    if matched([s for s, _ in a], [s for s, _ in b]):
        by_seed = dict(b)
        return stats.compare_samples([v for _, v in a], [by_seed[s] for s, _ in a], paired=True)
    return stats.compare_samples([v for _, v in a], [v for _, v in b], paired=False)


def pair_row(a: str, b: str, metric: str, summary: str, t: stats.PairTest, label: str | None = None,
             better: stats.Better = "higher") -> dict[str, Any]:
    """One test as a row of `comparison.json`'s `pairs` (finished by `conclude`)."""
    ci = None if t.low is None else [t.low, t.high]
    diff = t.diff if math.isfinite(t.diff) else None  # no values in an arm: nothing to subtract
    return {"a": a, "b": b, "metric": metric, "label": label or metric, "summary": summary, "diff": diff, "ci": ci,
            "p": t.p, "effect_size": t.effect_size, "effect_size_kind": t.effect_size_kind, "test": t.test,
            "n_a": t.n_a, "n_b": t.n_b, "sd": t.sd, "_test": t, "_better": better}


def reached_test(a: list[bool], b: list[bool]) -> stats.PairTest:
    """Share of A's runs with a property (e.g. reached a plateau) minus B's: Fisher's exact test,
    Newcombe's interval for the difference of two proportions (it stays within [-1, 1])."""
    ka, kb, na, nb = sum(a), sum(b), len(a), len(b)
    kind = "difference of shares"
    if not na or not nb:
        return stats.PairTest(math.nan, None, None, None, FISHER, None, kind, None, na, nb)
    diff = ka / na - kb / nb
    if ka in (0, na) and kb in (0, nb) and diff == 0:  # every run the same way: nothing to test
        return stats.PairTest(0.0, 0.0, 0.0, 1.0, FISHER, None, kind, 0.0, na, nb)
    p = float(fisher_exact([[ka, na - ka], [kb, nb - kb]]).pvalue)
    low, high = confint_proportions_2indep(ka, na, kb, nb, method="newcomb", compare="diff")
    return stats.PairTest(diff, float(low), float(high), p, FISHER, None, kind, None, na, nb)


def degenerate(t: stats.PairTest) -> bool:
    """Every run gave the same number in each arm (no spread): reported, but not a test Holm counts."""
    return t.p is not None and t.sd == 0


def _degenerate_verdict(row: dict[str, Any], t: stats.PairTest, better: stats.Better) -> str:
    if t.diff == 0:
        return "no difference: identical in every run (no spread to test; left out of the Holm family)"
    a_higher = t.diff > 0
    if better is None:
        side, word = (row["a"] if a_higher else row["b"]), "higher"
    else:
        side, word = (row["a"] if a_higher == (better == "higher") else row["b"]), "better"
    return (f"{side} {word} by exactly {abs(t.diff):.3g} in every run (no spread to test; left out of the "
            "Holm family)")


def conclude(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Holm-adjusted p over the rows that are tests, the seeds a non-detection would need, the verdicts.

    Degenerate rows (no spread in either arm, e.g. every run plateaued at one step) are reported
    with their verdict but left out of Holm's family: they cannot err, so they should not cost
    the real tests power. Seeds needed are for a two-sided test at alpha / (number of tests),
    the Bonferroni bound that Holm's first step uses.
    """
    tests: list[stats.PairTest] = [r["_test"] for r in rows]
    family = [None if degenerate(t) else r["p"] for r, t in zip(rows, tests, strict=True)]
    alpha = stats.ALPHA / max(1, sum(p is not None for p in family))
    for row, t, p_adj in zip(rows, tests, stats.holm(family), strict=True):
        row.pop("_test")
        better = row.pop("_better")
        needed = None if t.test == FISHER else stats.seeds_needed(t.diff, t.sd, t.paired, alpha=alpha)
        row.update(p_adjusted=p_adj, seeds_needed=needed, in_family=not degenerate(t) and t.p is not None)
        if degenerate(t):
            row["verdict"] = _degenerate_verdict(row, t, better)
        elif t.test == FISHER and (p_adj is None or p_adj >= stats.ALPHA) and p_adj is not None:
            row["verdict"] = f"no detectable difference ({t.n_a} and {t.n_b} runs)"
        else:
            row["verdict"] = stats.verdict(row["a"], row["b"], t, p_adj, better, needed)
    return rows
