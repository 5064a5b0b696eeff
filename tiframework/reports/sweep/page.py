"""Intervals over seeds for a search, and `sweep-report`'s interactive page (`report.html`).

A search's trial is one configuration trained once per seed; its mean over seeds is what
Optuna optimizes. `seed_intervals` gives that mean with a 95% Student-t interval, the same
interval `compare` uses, so a table of trials says how far apart two configurations
really are; `with_intervals` adds it to the trial table and `write_html` draws it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from tiframework.fileio import atomic_write_text
from tiframework.reports.html import Plot, color, plot, render, slug
from tiframework.reports.stats import mean_interval

INTERVAL_KEYS = ("best_fidelity", "plateau_step")  # per-seed numbers of a trial (worker.seed_result)


def seed_intervals(trial: FrozenTrial, key: str) -> dict[str, Any] | None:
    """Mean of `key` over the trial's seeds with its 95% t-interval (None without values)."""
    iv = mean_interval([s.get(key) for s in trial.user_attrs.get("seeds", {}).values()])
    return iv.as_dict() if iv else None


def with_intervals(rows: list[dict[str, Any]], study: optuna.Study) -> list[dict[str, Any]]:
    """The trial table (`trials.trial_rows`) with `<key>_ci_low/_ci_high` after each `<key>_std`."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    out = []
    for row in rows:
        new: dict[str, Any] = {}
        for col, value in row.items():
            new[col] = value
            key = col.removesuffix("_std")
            if col.endswith("_std") and key in INTERVAL_KEYS:
                iv = seed_intervals(trials[row["trial"]], key)
                ci = (iv or {}).get("ci") or ("", "")
                new[f"{key}_ci_low"], new[f"{key}_ci_high"] = (round(c, 6) if c != "" else "" for c in ci)
        out.append(new)
    return out


def _points(study: optuna.Study, key: str) -> list[tuple[FrozenTrial, dict[str, Any]]]:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [(t, iv) for t in done if (iv := seed_intervals(t, key)) is not None]


def _error_y(ivs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "data", "symmetric": False, "visible": any(iv["ci"] for iv in ivs),
            "array": [iv["ci"][1] - iv["mean"] if iv["ci"] else 0 for iv in ivs],
            "arrayminus": [iv["mean"] - iv["ci"][0] if iv["ci"] else 0 for iv in ivs]}


def trials_figure(study: optuna.Study, key: str) -> Plot | None:
    """Every complete trial's mean over seeds with its 95% interval, best first."""
    pts = sorted(_points(study, key), key=lambda p: -p[1]["mean"])
    if not pts:
        return None
    labels = [f"trial {t.number}" for t, _ in pts]
    hover = [", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in t.params.items()) + f" (n={iv['n']})"
             for t, iv in pts]
    fig = go.Figure(go.Scatter(x=labels, y=[iv["mean"] for _, iv in pts], mode="markers", text=hover,
                               error_y=_error_y([iv for _, iv in pts]), marker={"color": color(0), "size": 8},
                               hovertemplate="%{x}: %{y:.4g}<br>%{text}<extra></extra>"))
    fig.update_yaxes(title=key)
    return plot(fig, slug("trials", key), f"{key} per trial: mean and 95% interval over seeds",
                "Sorted best first; an interval needs at least two seeds. Overlapping intervals: the seeds do "
                "not tell those configurations apart.")


def param_figure(study: optuna.Study, key: str, param: str, index: int) -> Plot | None:
    pts = [(t, iv) for t, iv in _points(study, key) if param in t.params]
    if len({str(t.params[param]) for t, _ in pts}) < 2:
        return None
    numeric = all(isinstance(t.params[param], (int, float)) and not isinstance(t.params[param], bool)
                  for t, _ in pts)
    xs = [t.params[param] if numeric else str(t.params[param]) for t, _ in pts]
    fig = go.Figure(go.Scatter(x=xs, y=[iv["mean"] for _, iv in pts], mode="markers",
                               error_y=_error_y([iv for _, iv in pts]), marker={"color": color(index), "size": 8},
                               text=[f"trial {t.number}, n={iv['n']}" for t, iv in pts],
                               hovertemplate="%{x}: %{y:.4g}<br>%{text}<extra></extra>"))
    positive = numeric and all(x > 0 for x in xs)
    if positive and max(xs) / min(xs) >= 20:
        fig.update_xaxes(type="log")
    fig.update_xaxes(title=param)
    fig.update_yaxes(title=key)
    return plot(fig, slug("param", key, param), f"{key} vs {param}", "Each point: one trial, mean and 95% "
                "interval over its seeds (other parameters differ between points).")


def write_html(study: optuna.Study, rows: list[dict[str, Any]], summary: str, out: Path,
               confirmed: dict[str, Any] | None = None) -> Path:
    """`report.html` of a sweep: the confirmed answer (`confirmed`: headline lines, columns, rows) when
    the search has one, the trial table with intervals, then the interactive plots."""
    key = INTERVAL_KEYS[0]
    # A comparison's `seed` parameter is a replicate, not a setting: no plot against it.
    params = sorted({p for t in study.get_trials(deepcopy=False) for p in t.params} - {"seed"})
    plots = [trials_figure(study, key), *(param_figure(study, key, p, i) for i, p in enumerate(params))]
    columns = {c: c for c in (rows[0] if rows else {})}
    shown = [{c: _cell(r[c]) for c in columns} for r in rows]
    page = render("sweep.html.j2", title=f"Sweep report: {study.study_name}", summary=summary, columns=columns,
                  rows=shown, plots=[p for p in plots if p is not None], confirmed=confirmed)
    atomic_write_text(out / "report.html", page)
    return out / "report.html"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)
