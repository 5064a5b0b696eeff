"""The sweep report's PNGs. Each function returns the file it wrote, or why it wrote none.

Figures are built with `matplotlib.figure.Figure` (no pyplot), so nothing depends on a
display or on global backend state.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter
from optuna.trial import FrozenTrial, TrialState

from tiframework.reports.sweep.trials import (
    LR,
    VPT,
    finite,
    objective_names,
    plateau_reasons,
    reasons_text,
    save_figure,
    seed_reason,
    seed_stats,
)


def _figure(width: float = 7.0, height: float = 4.0) -> Any:
    return Figure(figsize=(width, height), layout="constrained")


def history(study: optuna.Study, out: Path) -> str:
    trials = study.get_trials(deepcopy=False)
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if not done and not pruned:
        return "skipped: no complete or pruned trial yet"
    names = objective_names(study)
    fig = _figure(7.0, 3.2 * len(names))
    for i, (ax, name) in enumerate(zip(fig.subplots(len(names), 1, squeeze=False)[:, 0], names, strict=True)):
        xs, ys = [t.number for t in done], [t.values[i] for t in done]
        ax.scatter(xs, ys, label="complete", zorder=3)
        if len(names) == 1 and done:
            pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
            best = [pick(ys[: k + 1]) for k in range(len(ys))]
            ax.step(xs, best, where="post", color="tab:red", label="best so far")
        if pruned and i == 0:
            last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
            ax.scatter([t.number for t in pruned], last, marker="x", color="gray", label="pruned (last report)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers
        ax.set_xlabel("trial")
        ax.set_ylabel(name)
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"{study.study_name}: optimization history")
    save_figure(fig, out / "history.png")
    return "history.png"


def _spread(groups: dict[float, list[Any]]) -> list[tuple[float, Any]]:
    """Several trials at one VPT (other parameters differ): spread them a little on the log axis."""
    out = []
    for x, items in groups.items():
        for j, item in enumerate(items):
            out.append((x * 2 ** ((j - (len(items) - 1) / 2) * 0.08), item))
    return out


def fidelity_vs_vpt(study: optuna.Study, out: Path) -> str:
    groups: dict[float, list[tuple[float, float, int]]] = defaultdict(list)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        mean, std, n = seed_stats(t, "best_fidelity")
        if VPT in t.params and mean is not None:
            groups[float(t.params[VPT])].append((mean, std or 0.0, n))
    if not groups:
        return f"skipped: no complete trial varies {VPT}"
    fig = _figure()
    ax = fig.subplots()
    points = _spread(groups)
    ax.errorbar([x for x, _ in points], [m for _, (m, _, _) in points], yerr=[s for _, (_, s, _) in points],
                fmt="o", capsize=4, label="one configuration: mean ± std over its seeds")
    vpts = sorted(groups)
    ax.set_xscale("log", base=2)
    ax.set_xticks(vpts, [f"{v:g}" for v in vpts])
    ax.minorticks_off()
    seeds = sorted({n for items in groups.values() for _, _, n in items})
    ax.set_xlabel("vectors per token (VPT)")
    ax.set_ylabel("best CLIP fidelity")
    ax.set_title(f"fidelity vs VPT ({'/'.join(map(str, seeds))} seed(s) per configuration)")
    ax.legend(loc="best", fontsize="small")
    save_figure(fig, out / "fidelity_vs_vpt.png")
    return "fidelity_vs_vpt.png"


# Seeds without a plateau are drawn at their final step, one marker per reason.
_NO_PLATEAU = {
    "still_rising": ("^", "tab:green", "still rising: no plateau by the final step (drawn there)"),
    "no_gain": ("x", "tab:red", "no gain over step 0 (drawn at the final step)"),
    "unrecorded": ("s", "tab:gray", "no plateau, reason not recorded (drawn at the final step)"),
}


def _plateau_points(trial: FrozenTrial) -> tuple[list[float], dict[str, list[float]]]:
    """The plateau steps of the seeds that reached one; per other reason, the final steps of
    the seeds that did not (every seed is counted somewhere, none is dropped)."""
    steps: list[float] = []
    others: dict[str, list[float]] = defaultdict(list)
    for s in trial.user_attrs.get("seeds", {}).values():
        reason = seed_reason(s)
        if reason == "plateau" and s.get("plateau_step") is not None:
            steps.append(float(s["plateau_step"]))
        elif s.get("final_step") is not None:
            others[reason].append(float(s["final_step"]))
    return steps, dict(others)


def _as_rate(value: Any) -> float | None:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        return None  # an A1111 schedule such as '0.005:500, 0.001'
    return rate if finite(rate) and rate > 0 else None


def _confirmed_points(confirm: dict[str, Any] | None) -> list[tuple[Any, dict[str, Any], str]]:
    """(learning rate, plateau-step interval, label) of each confirmed configuration that found plateaus."""
    out = []
    for c in (confirm or {}).get("configs", []):
        step = c["plateau"]["step"]
        if LR in c["params"] and step:
            out.append((c["params"][LR], step, f"{c['arm']}: {step['n']}/{c['plateau']['n']}"))
    return out


def _draw_confirmed(ax: Any, points: list[tuple[Any, dict[str, Any], str]], x: Any) -> None:
    if not points:
        return
    lows = [iv["mean"] - (iv["ci"] or [iv["mean"]])[0] for _, iv, _ in points]
    highs = [(iv["ci"] or [0, iv["mean"]])[1] - iv["mean"] for _, iv, _ in points]
    ax.errorbar([x(r) for r, _, _ in points], [iv["mean"] for _, iv, _ in points], yerr=[lows, highs], fmt="D",
                color="tab:red", capsize=5, label="confirmed on fresh seeds: mean and 95% interval")
    for rate, iv, label in points:
        ax.annotate(label, (x(rate), iv["mean"]), textcoords="offset points", xytext=(6, -10), fontsize="x-small",
                    color="tab:red")


def plateau_vs_lr(study: optuna.Study, out: Path, confirm: dict[str, Any] | None = None) -> str:
    pts, others, totals = [], [], Counter()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if LR not in t.params:
            continue
        steps, rest = _plateau_points(t)
        totals += plateau_reasons(t)
        n = len(steps) + sum(len(v) for v in rest.values())
        if steps:
            std = statistics.stdev(steps) if len(steps) > 1 else 0.0
            pts.append((t.params[LR], statistics.fmean(steps), std, f"{len(steps)}/{n}"))
        others += [(t.params[LR], reason, final) for reason, finals in rest.items() for final in finals]
    if not pts and not others:
        return f"skipped: no complete trial varies {LR}"
    fig = _figure()
    ax = fig.subplots()
    confirmed = _confirmed_points(confirm)
    rates = [p[0] for p in pts] + [o[0] for o in others] + [c[0] for c in confirmed]
    numeric = all(_as_rate(r) is not None for r in rates)
    labels = sorted({str(r) for r in rates})

    def x(rate: Any) -> float:
        return _as_rate(rate) if numeric else labels.index(str(rate))

    if pts:
        ax.errorbar([x(p[0]) for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt="o", capsize=4,
                    label="plateau step, mean ± std over the seeds with one (n/seeds beside it)")
        for rate, mean, _, share in pts:
            ax.annotate(share, (x(rate), mean), textcoords="offset points", xytext=(6, 4), fontsize="x-small")
    for reason, (marker, color, label) in _NO_PLATEAU.items():
        sel = [o for o in others if o[1] == reason]
        if sel:
            ax.scatter([x(o[0]) for o in sel], [o[2] for o in sel], marker=marker, color=color, label=label)
    _draw_confirmed(ax, confirmed, x)
    if numeric:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a short log range
        ax.set_xlabel("learning rate")
    else:
        ax.set_xticks(range(len(labels)), [lb if len(lb) < 28 else lb[:25] + "..." for lb in labels],
                      rotation=20, ha="right")
        ax.set_xlabel("learning-rate schedule")
    ax.set_ylabel("plateau step (optimizer steps)")
    ax.set_title(f"where fidelity stops improving (runs: {reasons_text(totals)})", fontsize="medium")
    ax.legend(loc="best", fontsize="small")
    save_figure(fig, out / "plateau_vs_lr.png")
    return "plateau_vs_lr.png"


def pareto(study: optuna.Study, out: Path) -> str:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return "skipped: no complete trial yet"
    front = {t.number for t in study.best_trials}
    names = objective_names(study)
    fig = _figure(5.5, 4.5)
    ax = fig.subplots()
    for on_front, color, label in ((False, "tab:gray", "dominated"), (True, "tab:red", "Pareto front")):
        sel = [t for t in done if (t.number in front) == on_front]
        ax.scatter([t.values[0] for t in sel], [t.values[1] for t in sel], color=color, label=label)
        for t in sel:
            ax.annotate(str(t.number), (t.values[0], t.values[1]), fontsize="x-small")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.legend(loc="best", fontsize="small")
    save_figure(fig, out / "pareto.png")
    return "pareto.png"


def write_plots(study: optuna.Study, out: Path, confirm: dict[str, Any] | None = None) -> dict[str, str]:
    """The PNGs; `confirm` (`confirmed.confirmation`) adds the confirmed plateaus to plateau vs learning rate."""
    made = {"optimization history": history(study, out), "fidelity vs VPT": fidelity_vs_vpt(study, out),
            "plateau step vs learning rate": plateau_vs_lr(study, out, confirm)}
    if len(study.directions) > 1:
        made["Pareto front"] = pareto(study, out)
    return made
