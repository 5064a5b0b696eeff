"""Reading a study for reports: trials, their per-seed numbers, why they failed; figure files."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tiframework.errors import UserError
from tiframework.fileio import atomic_path
from tiframework.sweeps import storage as st

VPT = "embedding.vectors_per_token"
LR = "training.learning_rate"
# A run's plateau reason (evaluation.plateau.REASONS); runs made before reasons were recorded
# are "plateau" when they have a plateau step and "unrecorded" otherwise.
REASON_ORDER = ("plateau", "still_rising", "no_gain", "unrecorded")


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


def seed_reason(seed: dict[str, Any]) -> str:
    """One seed's plateau reason, also for runs recorded before reasons existed."""
    if seed.get("plateau_reason"):
        return str(seed["plateau_reason"])
    return "plateau" if seed.get("plateau_step") is not None else "unrecorded"


def plateau_reasons(trial: FrozenTrial) -> Counter[str]:
    """How many of the trial's seeds ended in each plateau reason."""
    return Counter(seed_reason(s) for s in trial.user_attrs.get("seeds", {}).values())


def reasons_text(counts: Counter[str]) -> str:
    """`plateau 2, still_rising 1`: every reason that occurs, in a fixed order."""
    return ", ".join(f"{r} {counts[r]}" for r in REASON_ORDER if counts[r])


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
        # plateau_step's mean is over the seeds that have one; this says how many do, and why not
        row["plateau_reasons"] = reasons_text(plateau_reasons(t))
        row["seeds"] = len(t.user_attrs.get("seeds", {}))
        row["pruned_at_step"] = t.user_attrs.get("pruned_at_step", "")
        row["prune_reason"] = t.user_attrs.get("prune_reason", "")
        row["duration_s"] = round(t.duration.total_seconds(), 1) if t.duration else ""
        row["model_load_saved_s"] = t.user_attrs.get("model_load_saved_s", "")
        row["fail_reason"] = fail_reason(t, trials)
        rows.append(row)
    return rows


def save_figure(fig: Any, path: Path) -> None:
    """PNG via a temporary file, so a reader never sees half a plot."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
