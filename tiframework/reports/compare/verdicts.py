"""A comparison (`compare.build_comparison`'s result) as text: `report.md` and the terminal's table.

The formatting helpers are shared with the HTML report, so both show the same numbers.
"""

from __future__ import annotations

import statistics
from typing import Any

from tiframework.reports.compare.metrics import SUMMARIES

SUMMARY_LABELS = SUMMARIES | {"plateau": "share of runs"}


def num(x: Any, digits: int = 3) -> str:
    """Every number of the report to 3 significant figures (p-values: `pval`)."""
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return str(x)


def pval(p: float | None) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def ci(interval: list[float] | None) -> str:
    return "–" if interval is None else f"[{num(interval[0])}, {num(interval[1])}]"


def mean_ci(stat: dict[str, Any] | None) -> str:
    """`0.3512 [0.3301, 0.3723] (n=8)`, or a dash."""
    if not stat:
        return "–"
    return f"{num(stat['mean'])} {ci(stat.get('ci'))} (n={stat['n']})"


def settings(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(the base experiment)"


def verdict_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """The verdict table, one dict of display strings per test (shared by Markdown and HTML)."""
    out = []
    for p in result["pairs"]:
        out.append({
            "pair": f"{p['a']} vs {p['b']}", "metric": p["label"], "summary": SUMMARY_LABELS[p["summary"]],
            "diff": "–" if p["diff"] is None else f"{num(p['diff'])} {ci(p['ci'])}", "p": pval(p["p"]), "p_adjusted": pval(p["p_adjusted"]),
            "effect": num(p["effect_size"], 3), "test": p["test"], "n": f"{p['n_a']} / {p['n_b']}",
            "verdict": p["verdict"] + (f" ({p['note']})" if p.get("note") else ""),
            "detected": "yes" if p["p_adjusted"] is not None and p["p_adjusted"] < 0.05 else "no",
        })
    return out


VERDICT_COLUMNS = {"pair": "A vs B", "metric": "metric", "summary": "score", "diff": "A − B [95% CI, per test]",
                   "p": "p", "p_adjusted": "p (Holm)", "effect": "effect size", "test": "test", "n": "n (A / B)",
                   "verdict": "verdict"}


def verdict_columns(result: dict[str, Any]) -> dict[str, str]:
    """The verdict table's columns; with one pair of arms, A and B are named above it instead."""
    if len({(p["a"], p["b"]) for p in result["pairs"]}) == 1:
        return {k: v for k, v in VERDICT_COLUMNS.items() if k != "pair"}
    return VERDICT_COLUMNS


def pair_line(result: dict[str, Any]) -> str:
    pairs = list(dict.fromkeys((p["a"], p["b"]) for p in result["pairs"]))
    if len(pairs) == 1:
        return f"A = {pairs[0][0]}, B = {pairs[0][1]}."
    return "A and B are the first- and second-named arm of each pair."


def _table(columns: dict[str, str], rows: list[dict[str, str]]) -> list[str]:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]


def baseline_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for metric in result["metrics"].values():
        for arm, m in metric["arms"].items():
            rows.append({"metric": metric["label"], "arm": arm, "baseline": mean_ci(m["baseline"]),
                         "best": mean_ci(m["best"]), "gain_best": mean_ci(m["gain_best"]),
                         "final": mean_ci(m["final"]), "gain_final": mean_ci(m["gain_final"])})
    return rows


BASELINE_COLUMNS = {"metric": "metric", "arm": "arm", "baseline": "step 0 (init text)",
                    "best": "at the chosen checkpoint", "gain_best": "gain", "final": "at the last evaluation",
                    "gain_final": "gain"}


def plateau_rows(result: dict[str, Any]) -> tuple[dict[str, str], list[dict[str, str]]]:
    reasons = sorted({r for p in result["plateau"].values() for r in p["reasons"]})
    columns = {"arm": "arm", "step": "plateau step, runs that reached one"} | {r: r for r in reasons}
    rows = [{"arm": arm, "step": mean_ci(p["step"])} | {r: str(p["reasons"].get(r, 0)) for r in reasons}
            for arm, p in result["plateau"].items()]
    return columns, rows


def chosen_steps(steps: list[int]) -> str:
    """The chosen checkpoints' steps over an arm's runs: `80` when all agree, else `median 80 (40–120)`."""
    if not steps:
        return "–"
    ordered = sorted(steps)
    if ordered[0] == ordered[-1]:
        return str(ordered[0])
    return f"median {statistics.median(ordered):g} ({ordered[0]}–{ordered[-1]})"


def arm_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    return [{"arm": a["name"], "settings": settings(a["overrides"]), "n": str(a["n"]),
             "seeds": ", ".join(str(s) for s in a["seeds"]), "chosen": chosen_steps(a.get("best_steps", [])),
             "left_out": str(len(a["excluded"]))}
            for a in result["arms"]]


ARM_COLUMNS = {"arm": "arm", "settings": "settings", "n": "runs", "seeds": "seeds",
               "chosen": "chosen checkpoint step", "left_out": "left out"}
HEADLINE_COLUMNS = {"pair": "A vs B", "metric": "metric", "answer": "answer"}


def headline_columns(result: dict[str, Any]) -> dict[str, str]:
    if len({h["pair"] for h in result["headline"]}) == 1:
        return {k: v for k, v in HEADLINE_COLUMNS.items() if k != "pair"}
    return HEADLINE_COLUMNS


def method_lines(result: dict[str, Any]) -> list[str]:
    m = result["method"]
    return [f"- intervals: {m['interval']}", f"- intervals of differences: {m['intervals_of_differences']}",
            f"- rates: {m['rates']}", f"- tests: {m['tests']}", f"- plateau: {m['plateau']}",
            f"- equivalence: {m['equivalence']}", f"- effect sizes: {m['effect_size']}",
            f"- p-values: {m['correction']}", f"- seeds needed: {m['power']}",
            *(f"- {SUMMARY_LABELS[k]}: {v}" for k, v in m["summaries"].items()),
            "- 'no detectable difference' means these seeds cannot tell the arms apart, not that they are equal."]


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Comparison: {result['group']}", "",
             f"Source: `{result['source']}`; arms defined by: {', '.join(result['by']) or 'the sweep'}.", "",
             "## Answer", "", pair_line(result), "", *_table(headline_columns(result), result["headline"]), "",
             "## Verdicts", "", pair_line(result), "", *_table(verdict_columns(result), verdict_rows(result)), "",
             "## Arms", "", *_table(ARM_COLUMNS, arm_rows(result)), ""]
    if result["notes"]:
        lines += ["## Notes", "", *(f"- {n}" for n in result["notes"]), ""]
    lines += ["## Baseline and gains (mean [95% CI] over seeds)", "",
              *_table(BASELINE_COLUMNS, baseline_rows(result)), ""]
    columns, rows = plateau_rows(result)
    lines += ["## Plateau", "", *_table(columns, rows), "", "## Method", "", *method_lines(result), ""]
    return "\n".join(lines)


def terminal(result: dict[str, Any]) -> str:
    """The answer per metric, then the verdicts, one line per test, for the command's output."""
    answer = [f"answer: {h['pair']}: {h['metric']}: {h['answer']}" for h in result["headline"]]
    return "\n".join(answer) + "\n" + "\n".join(f"{r['pair']}: {r['metric']} {r['summary']}: {r['diff']}, p (Holm) {r['p_adjusted']}: "
                     f"{r['verdict']}" for r in verdict_rows(result))
