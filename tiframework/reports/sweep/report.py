"""`tiframework sweep-report`: what a study found, as tables and plots.

Writes (atomically) into the output folder:
- `trials.csv` and `trials.md`: one row per trial (parameters, objective, held-out best
  fidelity as mean and std over seeds, plateau step as mean and std over the seeds that
  reached one, the seeds counted per plateau reason, state, why it failed or was pruned),
  plus parameter importances (fANOVA) when enough trials completed;
- `history.png` (objective per trial and best so far), `fidelity_vs_vpt.png` (mean ± std
  over seeds per trial), `plateau_vs_lr.png` (seeds without a plateau drawn at their final
  step by reason, and counted), and `pareto.png` for two objectives;
- with a confirmation stage (`confirm:`), first of all the confirmed answer
  (`reports.sweep.confirmed`): the best configuration on fresh seeds with its interval, its
  difference to the baseline with Holm p, the winner's curse and the plateaus; also `confirmed.json`;
- `report.html`: the confirmed answer, the trial table and interactive plots of each trial's mean with its 95%
  interval over seeds (also `*_ci_low`/`*_ci_high` columns in the tables).
A plot whose parameter the sweep did not vary is skipped, and the markdown says so.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tiframework.fileio import atomic_write_text
from tiframework.reports.sweep import confirmed, plots
from tiframework.reports.sweep.page import with_intervals, write_html
from tiframework.reports.sweep.trials import objective_names, open_study, trial_rows
from tiframework.sweeps import storage as st


def importances(study: optuna.Study) -> dict[str, dict[str, float] | str]:
    """Per objective: {param: importance}, or why there are none (too few trials, ...)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = objective_names(study)
    if len(complete) < 2 or not any(t.params for t in complete):
        return {n: f"needs at least 2 complete trials with parameters (have {len(complete)})" for n in names}
    out: dict[str, dict[str, float] | str] = {}
    for i, name in enumerate(names):
        target = (lambda t, i=i: t.values[i]) if len(names) > 1 else None
        if len({t.values[i] for t in complete}) == 1:
            out[name] = "the objective never varied, so no parameter explains it"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = optuna.importance.get_param_importances(study, target=target)
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:  # e.g. no parameter ever varied
            out[name] = f"not computable: {exc}"
    return out


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def state_line(rows: list[dict[str, Any]]) -> str:
    states = {s.name: sum(r["state"] == s.name for r in rows) for s in TrialState}
    return ", ".join(f"{n} {s.lower()}" for s, n in states.items() if n) + f" ({len(rows)} trials)"


def markdown(study: optuna.Study, rows: list[dict[str, Any]], imps: dict[str, Any], plots: dict[str, str],
             confirm: dict[str, Any] | None = None) -> str:
    lines = [f"# Sweep report: {study.study_name}", "", *confirmed.markdown_section(confirm), state_line(rows),
             "", "Per-trial means over seeds with 95% t-intervals (`_ci_low`, `_ci_high`); interactive: report.html"]
    if rows:
        cols = list(rows[0])
        lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", "## Parameter importances (fANOVA)", ""]
    for name, imp in imps.items():
        if isinstance(imp, str):
            lines.append(f"- {name}: {imp}")
        else:
            lines.append(f"- {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in imp.items()))
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({file})" if file.endswith(".png") else f"- {name}: {file}" for name, file in plots.items()]
    return "\n".join(lines) + "\n"


def default_out_dir(loc: st.StudyLocation, study: str) -> Path:
    return loc.journal.parent / "report" if loc.journal is not None else Path(f"sweep-report-{study}")


def write_report(target: str, study_name: str | None = None, out_dir: str | Path | None = None) -> Path:
    """Write the tables and plots of a study; return the output folder."""
    study, loc = open_study(target, study_name)
    out = Path(out_dir) if out_dir else default_out_dir(loc, study.study_name)
    out.mkdir(parents=True, exist_ok=True)
    rows = with_intervals(trial_rows(study), study)
    confirm = confirmed.confirmation(study, loc)
    made = plots.write_plots(study, out, confirm)
    atomic_write_text(out / "trials.csv", _csv_text(rows))
    atomic_write_text(out / "trials.md", markdown(study, rows, importances(study), made, confirm))
    page = None
    if confirm is not None:
        atomic_write_text(out / "confirmed.json", json.dumps(confirm, indent=2, default=str) + "\n")
        table = confirmed.confirm_rows(confirm)
        page = {"headline": confirmed.headline(confirm), "columns": {c: c for c in (table[0] if table else {})},
                "rows": table}
    write_html(study, rows, state_line(rows), out, page)
    return out
