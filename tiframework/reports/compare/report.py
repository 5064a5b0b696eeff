"""`tiframework compare`: arms of runs, compared metric by metric with intervals and tests.

`build_comparison(runset)` returns the whole result as plain data (what `comparison.json`
holds): per arm, curves over steps (mean and 95% t-interval over seeds), the step-0
baseline, the score at the chosen checkpoint and at the last evaluation, gains over the
baseline and plateau counts; per pair of arms, the difference on each per-run summary
with its interval, a paired or Welch t-test, an effect size, Holm-adjusted p-values over
every test in the report, and a one-line verdict. `write_comparison` writes
`comparison.json`, `report.md` and `report.html` atomically.

Run folders made before the eval-file contract (no selection scores, no `_se` columns,
no plateau reasons) are read too; the report says which fallback it used.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tiframework.errors import UserError
from tiframework.fileio import atomic_write_text
from tiframework.reports import stats
from tiframework.reports.compare import headline, page, pairs, verdicts
from tiframework.reports.compare.metrics import (
    FIDELITY,
    PLATEAU,
    RATES,
    SELECT_FIDELITY,
    SUMMARIES,
    Metric,
    present,
)
from tiframework.reports.compare.runset import Arm, Run, RunSet
from tiframework.reports.compare.targets import load_runset
from tiframework.tracking.wandb_report import log_report

CHOSEN_ON_SELECTION = "selection"
CHOSEN_ON_HELD_OUT = "held-out"  # a run from before selection seeds: the choice peeked
NO_REASON = "not recorded"


def chosen_step(run: Run) -> tuple[int, str]:
    """The step of the run's chosen checkpoint and what it was chosen on.

    The run's own `best_step` (argmax of `select/clip_fidelity`, the contract); a run without
    selection scores chose on the held-out fidelity itself (`held-out`: biased upward).
    """
    rows = run.rows
    selection = any(SELECT_FIDELITY in r for r in rows)
    steps = {r["step"] for r in rows}
    best = run.summary.get("best_step")
    if best not in steps:
        key = SELECT_FIDELITY if selection else FIDELITY
        scored = [r for r in rows if key in r] or rows
        best = max(scored, key=lambda r: (r.get(key, float("-inf")), -r["step"]))["step"]
    return int(best), CHOSEN_ON_SELECTION if selection else CHOSEN_ON_HELD_OUT


def run_values(run: Run, metrics: list[Metric]) -> dict[str, Any]:
    """One run's per-metric numbers: baseline (step 0), at the chosen checkpoint, final; plateau."""
    by_step = {r["step"]: r for r in run.rows}
    best_step, chosen_on = chosen_step(run)
    best, final, base = by_step[best_step], run.rows[-1], by_step.get(0, run.rows[0])
    values: dict[str, Any] = {}
    for m in metrics:
        values[m.key] = {"baseline": base.get(m.key), "best": best.get(m.key), "final": final.get(m.key),
                         "best_se": best.get(m.se_key), "final_se": final.get(m.se_key)}
    plateau = run.summary.get("plateau_step")
    reason = run.summary.get("plateau_reason") or ("plateau" if plateau is not None else NO_REASON)
    return {"seed": run.seed, "run": str(run.path), "best_step": best_step, "final_step": final["step"],
            "chosen_on": chosen_on, "plateau_step": plateau, "plateau_reason": reason, "metrics": values,
            "has_se": any(k.endswith("_se") for r in run.rows for k in r)}


def _interval(values: list[float | None], rate: bool = False) -> dict[str, Any] | None:
    iv = stats.bootstrap_interval(values) if rate else stats.mean_interval(values)
    return iv.as_dict() if iv else None


def curves(arm: Arm, metric: Metric) -> list[dict[str, Any]]:
    """Per step: mean, 95% t-interval and n over the arm's runs that evaluated at that step."""
    steps = sorted({r["step"] for run in arm.runs for r in run.rows if metric.key in r})
    out = []
    for step in steps:
        vals = [r[metric.key] for run in arm.runs for r in run.rows if r["step"] == step and metric.key in r]
        out.append({"step": step} | (_interval(vals) or {}))
    return out


def arm_metric(arm: Arm, per_run: list[dict[str, Any]], metric: Metric) -> dict[str, Any]:
    vals = [v["metrics"][metric.key] for v in per_run]

    def gains(kind: str) -> list[float | None]:
        return [None if v[kind] is None or v["baseline"] is None else v[kind] - v["baseline"] for v in vals]

    return {
        "curve": curves(arm, metric),
        **{kind: _interval([v[kind] for v in vals], metric.key in RATES) for kind in ("baseline", *SUMMARIES)},
        **{f"gain_{kind}": _interval(gains(kind)) for kind in SUMMARIES},
        "per_seed": [{"seed": p["seed"], "run": p["run"], "best_step": p["best_step"]}
                     | {k: v[k] for k in ("baseline", "best", "best_se", "final", "final_se")}
                     | {"curve": [[r["step"], r[metric.key]] for r in run.rows if metric.key in r]}
                     for p, v, run in zip(per_run, vals, arm.runs, strict=True)],
    }


def arm_plateau(per_run: list[dict[str, Any]]) -> dict[str, Any]:
    return {"step": _interval([p["plateau_step"] for p in per_run]),
            "reasons": dict(Counter(p["plateau_reason"] for p in per_run)),
            "per_seed": [{"seed": p["seed"], "step": p["plateau_step"], "reason": p["plateau_reason"]}
                         for p in per_run]}


def pair_tests(names: list[str], per_run: dict[str, list[dict[str, Any]]], metrics: list[Metric]) -> list[dict[str, Any]]:
    """Every pair of arms x tested metric x summary (and the plateau step), Holm-corrected together."""
    rows = []
    for a, b in itertools.combinations(names, 2):
        def seeds(arm: str, value: Any) -> pairs.SeedValues:
            return [(p["seed"], value(p)) for p in per_run[arm]]

        for m in [m for m in metrics if m.tested]:
            for kind in SUMMARIES:
                def value(p: dict[str, Any], m: Metric = m, kind: str = kind) -> float | None:
                    return p["metrics"][m.key][kind]

                t = pairs.paired_or_welch(seeds(a, value), seeds(b, value))
                rows.append(pairs.pair_row(a, b, m.key, kind, t, m.label, m.better))
        # Whether runs reached a plateau at all, not the step of those that did: a mean step over
        # the runs that plateaued hides the ones that never did (read as "0 [0, 0]" when 9 of 24 did not).
        reached = pairs.reached_test([p["plateau_step"] is not None for p in per_run[a]],
                                     [p["plateau_step"] is not None for p in per_run[b]])
        rows.append(pairs.pair_row(a, b, PLATEAU.key, "plateau", reached, PLATEAU.label, PLATEAU.better))
    return pairs.conclude(rows)


def fallback_notes(per_run: dict[str, list[dict[str, Any]]]) -> list[str]:
    """What the report had to assume about run folders older than the eval-file contract."""
    runs = [p for ps in per_run.values() for p in ps]
    notes = []
    peeked = sum(p["chosen_on"] == CHOSEN_ON_HELD_OUT for p in runs)
    if peeked:
        notes.append(f"{peeked} of {len(runs)} runs have no selection scores ({SELECT_FIDELITY}; made before "
                     "eval.selection_seeds): their checkpoint was chosen on the same held-out images that score "
                     "it, so 'at the chosen checkpoint' is biased upward there, fidelity most. The final "
                     "score is not.")
    no_se = sum(not p["has_se"] for p in runs)
    if no_se:
        notes.append(f"{no_se} of {len(runs)} runs have no per-evaluation standard errors (_se columns): "
                     "their per-seed points carry no error bars.")
    no_reason = sum(p["plateau_reason"] == NO_REASON for p in runs)
    if no_reason:
        notes.append(f"{no_reason} of {len(runs)} runs record no plateau_reason and no plateau step: counted "
                     f"as '{NO_REASON}' (still rising or no gain).")
    return notes


def order_arms(arms: list[Arm], a: str | None, b: str | None) -> list[Arm]:
    """`--a` first and `--b` second (the direction of every "A - B"); the rest as they came."""
    names = [x.name for x in arms]
    for chosen in (a, b):
        if chosen is not None and chosen not in names:
            raise UserError(f"--a/--b {chosen!r}: no such arm (arms: {', '.join(names)})")
    first = [x for name in (a, b) for x in arms if name is not None and x.name == name]
    return first + [x for x in arms if x not in first]


def shares_images(runs: list[Run]) -> bool:
    """Every run scored on the one eval image set (seeds not following the training seed)."""
    return len(runs) > 1 and not any(r.flat.get("eval.seeds_follow_training_seed") for r in runs)


def build_comparison(runset: RunSet, margin: float = headline.MARGIN, a: str | None = None,
                     b: str | None = None) -> dict[str, Any]:
    runset.arms = order_arms(runset.arms, a, b)
    arms = [a for a in runset.arms if a.runs]
    metrics = present([r.rows for a in arms for r in a.runs])
    per_run = {a.name: [run_values(r, metrics) for r in a.runs] for a in arms}
    notes = list(runset.notes) + fallback_notes(per_run)
    notes += [f"arm {a.name}: {e['run']} left out ({e['reason']})" for a in runset.arms for e in a.excluded]
    if runset.confounders:
        keys = ", ".join(sorted(runset.confounders))
        notes.append(f"the arms also differ in {keys}: a difference cannot be put down to "
                     f"{', '.join(runset.by) or 'the arm settings'} alone")
    result = {
        "version": 1, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": runset.source, "group": runset.group, "by": runset.by,
        "method": method(),
        "arms": [{"name": a.name, "overrides": a.overrides, "n": len(a.runs), "seeds": a.seeds,
                  "best_steps": [p["best_step"] for p in per_run.get(a.name, [])],
                  "runs": [str(r.path) for r in a.runs], "excluded": a.excluded} for a in runset.arms],
        "confounders": runset.confounders, "notes": notes,
        "metrics": {m.key: {"label": m.label, "better": m.better, "tested": m.tested,
                            "arms": {a.name: arm_metric(a, per_run[a.name], m) for a in arms}} for m in metrics},
        "plateau": {a.name: arm_plateau(per_run[a.name]) for a in arms},
        "pairs": pair_tests([a.name for a in arms], per_run, metrics),
    }
    result["equivalence"] = headline.equivalence(result, margin)
    result["headline"] = headline.headline(result)
    result["notes"] += headline.seed_notes(result, shares_images([r for a in arms for r in a.runs]))
    return result


def method() -> dict[str, Any]:
    return {
        "interval": f"two-sided {stats.LEVEL:.0%} Student-t interval of the mean over seeds (n - 1 df)",
        "tests": "paired t-test on per-seed differences when every seed ran in both arms, else Welch's t-test",
        "effect_size": "paired: d_z = mean difference / sd of differences; Welch: Cohen's d with the pooled sd",
        "correction": f"Holm over every test in the report, family-wise alpha {stats.ALPHA}; a test with no "
                      "spread in either arm (every run identical) is reported but left out of the family",
        "intervals_of_differences": "95% per test, not adjusted for the number of tests: an interval that "
                                    "excludes 0 with a Holm p above 0.05 is not a detected difference",
        "rates": "attribute accuracy, trait recall and trait leak per arm: percentile bootstrap over seeds (2000 "
                 "resamples), which stays within [0, 1]",
        "plateau": "share of runs that reached a plateau: Fisher's exact test, Newcombe interval",
        "equivalence": "two one-sided t-tests (TOST, paired when the seeds match) against ±margin, Holm over "
                       "the equivalence tests",
        "power": f"seeds per arm for {stats.POWER:.0%} power to detect the observed difference with the observed "
                 f"sd, two-sided at alpha {stats.ALPHA} / number of tests (the Bonferroni bound Holm starts from)",
        "summaries": {"best": "held-out score at the checkpoint chosen on the selection seeds (best_step)",
                      "final": "held-out score at the last evaluation",
                      "plateau": "whether each run reached a plateau (plateau_step set)"},
    }


def _finite(value: Any) -> Any:
    """NaN and infinities as null: JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_comparison(result: dict[str, Any], out: Path, html: str, markdown: str) -> dict[str, Path]:
    """comparison.json, report.md and report.html in `out`, each written atomically."""
    files = {"json": out / "comparison.json", "md": out / "report.md", "html": out / "report.html"}
    atomic_write_text(files["json"], json.dumps(_finite(result), indent=2, default=str, allow_nan=False) + "\n")
    atomic_write_text(files["md"], markdown)
    atomic_write_text(files["html"], html)
    return files



WANDB_COLUMNS = ["a", "b", "metric", "summary", "diff", "ci_low", "ci_high", "p", "p_holm", "effect_size",
                 "n_a", "n_b", "test", "verdict"]


def wandb_table(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The verdicts as numbers (None where there is none), so W&B can sort and plot them."""
    rows = []
    for p in result["pairs"]:
        ci = p["ci"] or [None, None]
        rows.append([p["a"], p["b"], p["metric"], p["summary"], p["diff"], ci[0], ci[1], p["p"], p["p_adjusted"],
                     p["effect_size"], p["n_a"], p["n_b"], p["test"], p["verdict"]])
    return WANDB_COLUMNS, rows


def wandb_summary(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in result["pairs"]:
        key = f"{p['metric'].removeprefix('eval/')}/{p['summary']}/{p['a']} vs {p['b']}"
        out |= {f"verdict/{key}": p["verdict"], f"diff/{key}": p["diff"], f"p_holm/{key}": p["p_adjusted"]}
    return out


@dataclass
class Compared:
    result: dict[str, Any]
    out: Path
    files: dict[str, Path]
    wandb_dir: Path | None


def compare(targets: list[str], by: list[str] | None = None, study_name: str | None = None,
            out_dir: str | Path | None = None, wandb: bool = True, margin: float = headline.MARGIN,
            a: str | None = None, b: str | None = None) -> Compared:
    """Load the arms, compare them, write the report files and (unless `wandb=False`) a W&B run."""
    runset = load_runset(targets, by, study_name)
    result = build_comparison(runset, margin, a, b)
    out = Path(out_dir) if out_dir else runset.default_out
    out.mkdir(parents=True, exist_ok=True)
    curve_plots, seed_plots = page.figures(result)
    files = write_comparison(result, out, page.html(result, curve_plots, seed_plots),
                             verdicts.markdown(result))
    wandb_dir = None
    if wandb:
        cols, rows = wandb_table(result)
        # Its own group beside the arms' (`<group>-compare`): not an arm-less member of theirs.
        wandb_dir = log_report(
            project=runset.wandb_project, group=f"{runset.group}-compare", name=f"{runset.group}/compare",
            job_type="compare",
            config={"source": result["source"], "by": result["by"], "compares_group": runset.group,
                    "arms": {a["name"]: a["overrides"] for a in result["arms"]},
                    "n": {a["name"]: a["n"] for a in result["arms"]}},
            tables={"compare/verdicts": (cols, rows)},
            plots={f"compare/{p.id}": p.figure for p in curve_plots + seed_plots},
            summary=wandb_summary(result), images=page.last_eval_images(result),
            files=[files["json"], files["md"], files["html"]], save_dir=out)
    return Compared(result, out, files, wandb_dir)
