"""`tiframework sweep-report`: what a study found, as tables and plots.

Writes (atomically) into the output folder:
- `trials.csv` and `trials.md`: one row per trial (parameters, objective, best fidelity and
  plateau step as mean and std over seeds, state, why it failed or was pruned), plus
  parameter importances (fANOVA) when enough trials completed;
- `history.png` (objective per trial and best so far), `fidelity_vs_vpt.png` (mean ± std
  over seeds per trial), `plateau_vs_lr.png`, and `pareto.png` for two objectives.
A plot whose parameter the sweep did not vary is skipped, and the markdown says so.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tiframework.errors import UserError
from tiframework.fileio import atomic_path, atomic_write_text
from tiframework.sweeps import storage as st

VPT = "embedding.vectors_per_token"
LR = "training.learning_rate"


def open_study(target: str, study_name: str | None) -> tuple[optuna.Study, st.StudyLocation]:
    """Load a study from a sweep folder, a journal file or a database URL (read-only use)."""
    loc = st.locate(target, Path(target))
    storage = st.open_storage(loc, None, create=False)
    names = sorted(s.study_name for s in storage.get_all_studies())
    if study_name is None:
        if len(names) != 1:
            listed = ", ".join(names) or "none"
            raise UserError(f"{loc.describe()} holds {len(names)} studies ({listed}); pick one with --study-name")
        study_name = names[0]
    elif study_name not in names:
        raise UserError(f"{loc.describe()}: no study named {study_name!r} (there are: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=study_name, storage=storage), loc


def objective_names(study: optuna.Study) -> list[str]:
    names = study.metric_names
    return list(names) if names else [f"value_{i}" for i in range(len(study.directions))]


def seed_stats(trial: FrozenTrial, key: str) -> tuple[float | None, float | None, int]:
    """Mean and std over the trial's seeds of one per-seed number (None when absent)."""
    values = [s.get(key) for s in trial.user_attrs.get("seeds", {}).values()]
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def fail_reason(trial: FrozenTrial, trials: list[FrozenTrial]) -> str:
    if trial.state != TrialState.FAIL:
        return ""
    reason = trial.user_attrs.get("fail_reason")
    if reason:
        return str(reason)
    retry = next((t.number for t in trials if t.system_attrs.get("retry_history", [None])[-1] == trial.number), None)
    if retry is not None:
        return f"worker died (no heartbeat); retried as trial {retry}"
    return "worker died (no heartbeat)" if trial.system_attrs.get(st.HEARTBEAT_ATTR) else "failed (no reason recorded)"


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    trials = study.get_trials(deepcopy=False)
    params = sorted({k for t in trials for k in t.params})
    names = objective_names(study)
    rows = []
    for t in trials:
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        row |= {k: t.params.get(k, "") for k in params}
        values = t.values or []
        row |= {f"objective_{n}": (values[i] if i < len(values) else "") for i, n in enumerate(names)}
        for key in ("best_fidelity", "plateau_step"):
            mean, std, n = seed_stats(t, key)
            row[key] = "" if mean is None else round(mean, 6)
            row[f"{key}_std"] = "" if std is None else round(std, 6)
        row["seeds"] = len(t.user_attrs.get("seeds", {}))
        row["pruned_at_step"] = t.user_attrs.get("pruned_at_step", "")
        row["duration_s"] = round(t.duration.total_seconds(), 1) if t.duration else ""
        row["model_load_saved_s"] = t.user_attrs.get("model_load_saved_s", "")
        row["fail_reason"] = fail_reason(t, trials)
        rows.append(row)
    return rows


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


def markdown(study: optuna.Study, rows: list[dict[str, Any]], imps: dict[str, Any], plots: dict[str, str]) -> str:
    lines = [f"# Sweep report: {study.study_name}", ""]
    states = {s.name: sum(r["state"] == s.name for r in rows) for s in TrialState}
    lines.append(", ".join(f"{n} {s.lower()}" for s, n in states.items() if n) + f" ({len(rows)} trials)")
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
    from tiframework.sweeps import plots

    study, loc = open_study(target, study_name)
    out = Path(out_dir) if out_dir else default_out_dir(loc, study.study_name)
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    made = plots.write_plots(study, out)
    atomic_write_text(out / "trials.csv", _csv_text(rows))
    atomic_write_text(out / "trials.md", markdown(study, rows, importances(study), made))
    return out


def save_figure(fig: Any, path: Path) -> None:
    """PNG via a temporary file, so a reader never sees half a plot."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
