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

from tiframework.reports import stats

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


def conclude(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Holm-adjusted p over all the rows, the seeds a non-detection would need, the verdicts.

    Seeds needed are for a two-sided test at alpha / (number of tests), the Bonferroni bound
    that Holm's first step uses: what a rerun with that many seeds, reported the same way,
    would need.
    """
    tested = [r for r in rows if r["p"] is not None]
    alpha = stats.ALPHA / max(1, len(tested))
    for row, p_adj in zip(rows, stats.holm([r["p"] for r in rows]), strict=True):
        t: stats.PairTest = row.pop("_test")
        needed = stats.seeds_needed(t.diff, t.sd, t.paired, alpha=alpha)
        row.update(p_adjusted=p_adj, seeds_needed=needed,
                   verdict=stats.verdict(row["a"], row["b"], t, p_adj, row.pop("_better"), needed))
    return rows
