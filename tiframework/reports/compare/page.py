"""`report.html` of a comparison: the answer and the verdict table, then per metric the curves
over steps (mean line and 95% band per arm, each seed's points), the per-seed scores at the
chosen checkpoint and at the end, the paired differences (one point per seed), the plateau
steps, and the eval images arm x step.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tiframework.reports.compare import verdicts as text
from tiframework.reports.html import Plot, color, jpeg_data_uri, plot, render, slug

EVAL_IMAGES = "eval_images"
_IMAGE_STEP = re.compile(r"^step-(\d+)\.png$")


def curve_figure(metric: dict[str, Any], key: str) -> Plot:
    fig = go.Figure()
    for i, (arm, m) in enumerate(metric["arms"].items()):
        pts = [p for p in m["curve"] if "mean" in p]
        steps = [p["step"] for p in pts]
        banded = [p for p in pts if p.get("ci")]
        if banded:
            xs = [p["step"] for p in banded]
            fig.add_trace(go.Scatter(
                x=xs + xs[::-1], y=[p["ci"][1] for p in banded] + [p["ci"][0] for p in banded][::-1],
                fill="toself", fillcolor=color(i, 0.18), line={"width": 0}, hoverinfo="skip",
                legendgroup=arm, showlegend=False, name=f"{arm} 95% interval"))
        fig.add_trace(go.Scatter(
            x=steps, y=[p["mean"] for p in pts], mode="lines+markers", name=f"{arm} (mean)", legendgroup=arm,
            line={"color": color(i)}, customdata=[[p["n"]] for p in pts],
            hovertemplate="step %{x}<br>mean %{y:.4g}<br>n=%{customdata[0]}<extra>" + arm + "</extra>"))
        points = [(step, value, f"seed {run['seed']}") for run in m["per_seed"] for step, value in run["curve"]]
        xs, ys, labels = ([p[k] for p in points] for k in range(3))
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", marker={"color": color(i), "size": 5, "opacity": 0.45},
            name=f"{arm} (each seed)", legendgroup=arm, text=labels,
            hovertemplate="%{text}<br>step %{x}: %{y:.4g}<extra>" + arm + "</extra>"))
    fig.update_xaxes(title="optimizer step")
    fig.update_yaxes(title=metric["label"])
    return plot(fig, slug("curve", key), f"{metric['label']} over training",
                "Line: mean over seeds; band: 95% Student-t interval; dots: each seed's run.")


def _offsets(n: int) -> list[float]:
    return [0.0] if n < 2 else [-0.18 + 0.36 * j / (n - 1) for j in range(n)]


def seed_figure(metric: dict[str, Any], key: str) -> Plot:
    """Per-seed values (± their image-sampling SE where recorded) and the arm's mean ± 95% CI."""
    kinds = list(text.SUMMARIES)
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[text.SUMMARIES[k] for k in kinds], shared_yaxes=True)
    arms = list(metric["arms"])
    for col, kind in enumerate(kinds, start=1):
        for i, arm in enumerate(arms):
            m = metric["arms"][arm]
            runs = [r for r in m["per_seed"] if r[kind] is not None]
            se = [r.get(f"{kind}_se") for r in runs]
            fig.add_trace(go.Scatter(
                x=[i + o for o in _offsets(len(runs))], y=[r[kind] for r in runs], mode="markers",
                marker={"color": color(i), "size": 8}, name=arm, legendgroup=arm, showlegend=col == 1,
                error_y={"type": "data", "array": [s or 0 for s in se], "visible": any(s is not None for s in se)},
                text=[f"seed {r['seed']}, step {r['best_step'] if kind == 'best' else 'last'}" for r in runs],
                hovertemplate="%{text}: %{y:.4g}<extra>" + arm + "</extra>"), row=1, col=col)
            stat = m[kind]
            if stat and stat.get("ci"):
                fig.add_trace(go.Scatter(
                    x=[i + 0.32], y=[stat["mean"]], mode="markers", marker={"color": "black", "symbol": "diamond"},
                    error_y={"type": "data", "symmetric": False, "array": [stat["ci"][1] - stat["mean"]],
                             "arrayminus": [stat["mean"] - stat["ci"][0]]},
                    showlegend=False, hovertemplate=f"{arm} mean %{{y:.4g}} (95% CI)<extra></extra>"), row=1, col=col)
        fig.update_xaxes(tickvals=list(range(len(arms))), ticktext=arms, range=[-0.6, len(arms) - 0.4], row=1, col=col)
    fig.update_yaxes(title=metric["label"], row=1, col=1)
    return plot(fig, slug("seeds", key), f"{metric['label']}: each seed",
                "Dots: one run each (error bars: its image-sampling standard error, where recorded); "
                "black diamond: the arm's mean with its 95% interval over seeds.")


def _differences(metric: dict[str, Any], a: str, b: str, kind: str) -> list[tuple[Any, float]]:
    """(seed, A - B) for every seed both arms measured (empty unless the arms' seeds match)."""
    va = {r["seed"]: r[kind] for r in metric["arms"][a]["per_seed"] if r[kind] is not None}
    vb = {r["seed"]: r[kind] for r in metric["arms"][b]["per_seed"] if r[kind] is not None}
    if None in va or set(va) != set(vb):
        return []
    return [(s, va[s] - vb[s]) for s in sorted(va)]


def diff_figure(result: dict[str, Any], key: str) -> Plot | None:
    """Per pair of arms with matched seeds: each seed's difference A - B, and the mean with its interval."""
    metric, kinds = result["metrics"][key], list(text.SUMMARIES)
    pairs = [p for p in result["pairs"] if p["metric"] == key and p["test"] == "paired t"]
    names = list(dict.fromkeys((p["a"], p["b"]) for p in pairs))
    if not names:
        return None
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[text.SUMMARIES[k] for k in kinds], shared_yaxes=True)
    for col, kind in enumerate(kinds, start=1):
        for i, (a, b) in enumerate(names):
            diffs = _differences(metric, a, b, kind)
            fig.add_trace(go.Scatter(
                x=[i + o for o in _offsets(len(diffs))], y=[d for _, d in diffs], mode="markers",
                marker={"color": color(i), "size": 8}, name=f"{a} − {b}", showlegend=col == 1,
                text=[f"seed {s}" for s, _ in diffs], hovertemplate="%{text}: %{y:.3g}<extra></extra>"), row=1, col=col)
            row = next((p for p in pairs if (p["a"], p["b"], p["summary"]) == (a, b, kind)), None)
            if row and row["ci"]:
                fig.add_trace(go.Scatter(
                    x=[i + 0.32], y=[row["diff"]], mode="markers", marker={"color": "black", "symbol": "diamond"},
                    error_y={"type": "data", "symmetric": False, "array": [row["ci"][1] - row["diff"]],
                             "arrayminus": [row["diff"] - row["ci"][0]]}, showlegend=False,
                    hovertemplate="mean %{y:.3g} (95% CI, per test)<extra></extra>"), row=1, col=col)
        fig.add_hline(y=0, line={"color": "grey", "dash": "dot"}, row=1, col=col)
        fig.update_xaxes(tickvals=list(range(len(names))), ticktext=[f"{a} − {b}" for a, b in names],
                         range=[-0.6, len(names) - 0.4], row=1, col=col)
    fig.update_yaxes(title=f"A − B, {metric['label']}", row=1, col=1)
    return plot(fig, slug("diff", key), f"{metric['label']}: paired differences, one point per seed",
                "Dots: A − B for one training seed (both arms trained with it); black diamond: the mean "
                "difference with its 95% interval (per test). Dots on both sides of 0: the seeds disagree.")


def plateau_figure(plateau: dict[str, Any]) -> Plot:
    """Runs per plateau reason and arm (bars); the plateau step of each run that reached one."""
    arms, reasons = list(plateau), sorted({r for p in plateau.values() for r in p["reasons"]})
    with_steps = any(r["step"] is not None for p in plateau.values() for r in p["per_seed"])
    fig = make_subplots(rows=1, cols=2 if with_steps else 1,
                        subplot_titles=["runs per plateau reason", "plateau step of each run"][: 1 + with_steps])
    for i, arm in enumerate(arms):
        counts = plateau[arm]["reasons"]
        fig.add_trace(go.Bar(x=reasons, y=[counts.get(r, 0) for r in reasons], name=arm, marker_color=color(i),
                             legendgroup=arm, hovertemplate="%{x}: %{y} run(s)<extra>" + arm + "</extra>"), row=1, col=1)
        runs = [r for r in plateau[arm]["per_seed"] if r["step"] is not None]
        if with_steps:
            fig.add_trace(go.Scatter(
                x=[i + o for o in _offsets(len(runs))], y=[r["step"] for r in runs], mode="markers",
                marker={"color": color(i), "size": 8}, name=arm, legendgroup=arm, showlegend=False,
                text=[f"seed {r['seed']}" for r in runs], hovertemplate="%{text}: step %{y}<extra>" + arm + "</extra>"),
                row=1, col=2)
    fig.update_yaxes(title="runs", row=1, col=1)
    if with_steps:
        fig.update_xaxes(tickvals=list(range(len(arms))), ticktext=arms, range=[-0.6, len(arms) - 0.4], row=1, col=2)
        fig.update_yaxes(title="optimizer step", row=1, col=2)
    return plot(fig, "plateau", "plateau", "Plateau reasons: plateau (the curve stopped gaining), still_rising "
                "(no plateau before the last evaluation), no_gain (never rose above the baseline).")


def image_grids(result: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Per arm, rows of runs x columns of eval steps, from `<run>/eval_images/step-*.png`."""
    grids, missing = [], 0
    for arm in result["arms"]:
        images = {run: _step_images(Path(run)) for run in arm["runs"]}
        missing += sum(not found for found in images.values())
        steps = sorted({s for found in images.values() for s in found})
        if not steps:
            continue
        seeds = dict(zip(arm["runs"], arm["seeds"], strict=True))
        rows = [{"seed": seeds[run], "cells": [jpeg_data_uri(found[s]) if s in found else None for s in steps]}
                for run, found in images.items()]
        grids.append({"arm": arm["name"], "steps": steps, "rows": rows})
    total = sum(len(a["runs"]) for a in result["arms"])
    note = ""
    if missing:
        note = (f"{missing} of {total} runs have no {EVAL_IMAGES}/step-*.png (run folders made before eval "
                "images were saved): nothing to show for them.")
    return grids, note


def last_eval_images(result: dict[str, Any]) -> dict[str, list[tuple[Path, str]]]:
    """Per arm, each run's eval images at its last evaluation (for the W&B run), captioned."""
    out: dict[str, list[tuple[Path, str]]] = {}
    for arm in result["arms"]:
        for run, seed in zip(arm["runs"], arm["seeds"], strict=True):
            found = _step_images(Path(run))
            if found:
                step = max(found)
                out.setdefault(f"compare/eval_images/{arm['name']}", []).append(
                    (found[step], f"{arm['name']}, seed {seed}, step {step}"))
    return out


def _step_images(run: Path) -> dict[int, Path]:
    folder = run / EVAL_IMAGES
    found = {}
    for path in sorted(folder.glob("step-*.png")) if folder.is_dir() else []:
        match = _IMAGE_STEP.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def figures(result: dict[str, Any]) -> tuple[list[Plot], list[Plot]]:
    """(one curve plot per metric, one per-seed plot per metric + the plateau plot)."""
    curve_plots = [curve_figure(m, k) for k, m in result["metrics"].items()]
    diffs = [diff_figure(result, k) for k, m in result["metrics"].items() if m["tested"]]
    seed_plots = [seed_figure(m, k) for k, m in result["metrics"].items()] + [d for d in diffs if d is not None]
    seed_plots.append(plateau_figure(result["plateau"]))
    return curve_plots, seed_plots


def html(result: dict[str, Any], curve_plots: list[Plot], seed_plots: list[Plot]) -> str:
    """The page of a `compare.build_comparison` result, with its `figures`."""
    grids, images_note = image_grids(result)
    plateau_columns, plateau_rows = text.plateau_rows(result)
    arms_line = " vs ".join(f"{a['name']} ({a['n']} runs)" for a in result["arms"])
    return render(
        "compare.html.j2", title=f"Comparison: {result['group']}", arms_line=arms_line, result=result,
        verdict_columns=text.verdict_columns(result), verdict_rows=text.verdict_rows(result),
        headline_columns=text.headline_columns(result), headline_rows=result["headline"],
        pair_line=text.pair_line(result),
        detected=lambda row: "detected" if row.get("detected") == "yes" else "",
        curve_plots=curve_plots, seed_plots=seed_plots, grids=grids, images_note=images_note,
        arm_columns=text.ARM_COLUMNS, arm_rows=text.arm_rows(result),
        baseline_columns=text.BASELINE_COLUMNS, baseline_rows=text.baseline_rows(result),
        plateau_columns=plateau_columns, plateau_rows=plateau_rows, method_lines=text.method_lines(result))
