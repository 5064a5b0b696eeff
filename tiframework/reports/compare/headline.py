"""The answer at the top of a comparison: per metric, which arm is better, or neither, and
whether A is as good as B within a margin the user sets (an equivalence test).

"No detectable difference" only says the seeds could not tell the arms apart. "As good as"
is a different question with its own test: two one-sided t-tests (TOST, statsmodels'
`ttost_paired` / `ttost_ind`), which show the difference lies within ±margin. Its p-values
are Holm-corrected over the equivalence tests of the headline (a family of their own).
Also the notes a reader needs before trusting the numbers: one eval image set for every
run, seeds that only partly overlap between arms.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

from tiframework.reports import stats
from tiframework.reports.compare.metrics import PLATEAU, SUMMARIES
from tiframework.reports.compare.pairs import matched

MARGIN = 0.02  # default equivalence margin: about the seed-to-seed spread of a fidelity mean over 32 images


def _seed_values(metric: dict[str, Any], arm: str, kind: str) -> list[tuple[Any, float]]:
    return [(r["seed"], float(r[kind])) for r in metric["arms"][arm]["per_seed"]
            if r[kind] is not None and math.isfinite(float(r[kind]))]


def tost(a: list[tuple[Any, float]], b: list[tuple[Any, float]], margin: float) -> tuple[float | None, str]:
    """TOST p (equivalence of A and B within ±margin) and the test used; None when it cannot be done."""
    if len(a) < 2 or len(b) < 2:
        return None, "not enough runs"
    if matched([s for s, _ in a], [s for s, _ in b]):
        by_seed = dict(b)
        x, y = [v for _, v in a], [by_seed[s] for s, _ in a]
        if len({round(u - v, 12) for u, v in zip(x, y, strict=True)}) == 1:
            return (0.0 if abs(x[0] - y[0]) < margin else 1.0), "exact (no spread)"
        return float(ttost_paired(_arr(x), _arr(y), -margin, margin)[0]), "paired TOST"
    x, y = [v for _, v in a], [v for _, v in b]
    if len(set(x)) == 1 and len(set(y)) == 1:
        return (0.0 if abs(x[0] - y[0]) < margin else 1.0), "exact (no spread)"
    return float(ttost_ind(_arr(x), _arr(y), -margin, margin, usevar="unequal")[0]), "Welch TOST"


def _arr(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=float)


def equivalence(result: dict[str, Any], margin: float) -> list[dict[str, Any]]:
    """Per pair x tested metric x summary: the TOST p, Holm-corrected over these rows."""
    rows = []
    for p in result["pairs"]:
        if p["metric"] == PLATEAU.key:
            continue
        metric = result["metrics"][p["metric"]]
        pt, test = tost(_seed_values(metric, p["a"], p["summary"]), _seed_values(metric, p["b"], p["summary"]), margin)
        rows.append({"a": p["a"], "b": p["b"], "metric": p["metric"], "summary": p["summary"], "margin": margin,
                     "p": pt, "test": test})
    for row, adj in zip(rows, stats.holm([r["p"] for r in rows]), strict=True):
        row["p_adjusted"] = adj
        row["equivalent"] = adj is not None and adj < stats.ALPHA
    return rows


def _short(verdict: str, a: str, b: str) -> str:
    if verdict.startswith(f"{a} ") and ("better" in verdict or "higher" in verdict):
        return f"A ({a}) {verdict.removeprefix(a + ' ').split(' (')[0]}"
    if verdict.startswith(f"{b} ") and ("better" in verdict or "higher" in verdict):
        return f"B ({b}) {verdict.removeprefix(b + ' ').split(' (')[0]}"
    return verdict.split(" (")[0]


def headline(result: dict[str, Any]) -> list[dict[str, str]]:
    """One entry per pair x metric: the verdict at each summary and the equivalence answer."""
    eq = {(r["a"], r["b"], r["metric"], r["summary"]): r for r in result.get("equivalence", [])}
    out = []
    for p in result["pairs"]:
        if p["summary"] != "best" and p["metric"] != PLATEAU.key:
            continue
        parts = []
        for kind in (SUMMARIES if p["metric"] != PLATEAU.key else {"plateau": ""}):
            row = next(r for r in result["pairs"] if (r["a"], r["b"], r["metric"], r["summary"]) ==
                       (p["a"], p["b"], p["metric"], kind))
            where = f"{SUMMARIES[kind]}: " if kind in SUMMARIES else ""
            p_text = "" if row["p_adjusted"] is None else f", Holm p {row['p_adjusted']:.3g}"
            edge = " (near 0.05)" if row["p_adjusted"] is not None and 0.01 <= row["p_adjusted"] < 0.1 else ""
            parts.append(f"{where}{_short(row['verdict'], p['a'], p['b'])}{p_text}{edge}")
            e = eq.get((p["a"], p["b"], p["metric"], kind))
            if e and e["p_adjusted"] is not None:
                parts[-1] += (f"; {'equivalent' if e['equivalent'] else 'not shown equivalent'} within "
                              f"±{e['margin']:g} (TOST, Holm p {e['p_adjusted']:.3g})")
        out.append({"pair": f"{p['a']} vs {p['b']}", "metric": p["label"], "answer": " · ".join(parts)})
    return out


def seed_notes(result: dict[str, Any], runs_share_images: bool) -> list[str]:
    """Notes on the eval images and on seeds that only partly overlap between arms."""
    notes = []
    if runs_share_images:
        notes.append("every run was scored on the same eval images (eval.seeds_follow_training_seed off): the "
                     "verdicts hold for these images; the image-to-image noise is not in the intervals")
    arms = [a for a in result["arms"] if a["n"]]
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            sa, sb = set(a["seeds"]), set(b["seeds"])
            shared = sa & sb
            if shared and sa != sb:
                notes.append(f"arms {a['name']} and {b['name']} share {len(shared)} of their seeds ({len(sa)} and "
                             f"{len(sb)} runs): not paired, Welch's test compares all their runs")
    return notes
