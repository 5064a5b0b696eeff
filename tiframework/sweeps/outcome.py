"""A trial's outcome: its runs' held-out scores become its objective value, or its failure reason.

Shared by the one-at-a-time worker and population batches, so a trial's value, its `seeds`
user attribute and its `fail_reason` come out the same whichever way it trained.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import optuna

from tiframework.config import ExperimentConfig
from tiframework.errors import UserError
from tiframework.evaluation.columns import FIDELITY, FLEXIBILITY
from tiframework.sweeps import arms
from tiframework.sweeps.schema import OBJECTIVES, SweepConfig


class TrialFailed(Exception):
    """A run finished but cannot be scored (stopped early, no fidelity): the trial is FAIL."""


def seed_result(summary: dict[str, Any], rows: list[dict[str, float]]) -> dict[str, Any]:
    """One run's numbers, all measured on the held-out eval seeds: the fidelity of the
    checkpoint chosen on the selection seeds (`best_score`), fidelity at the plateau step
    (or at the last eval when there is none), flexibility at the best checkpoint; plus the
    plateau's reason and the steps a plateau stop saved; and the lowest validation loss (`val_loss`).
    A run without fidelity scores has None there (a val_loss sweep may run without evaluation)."""
    val_loss = summary.get("val_loss_best")
    val_loss = val_loss if isinstance(val_loss, float) and math.isfinite(val_loss) else None
    if (summary.get("best_score") is None or not rows) and val_loss is None:
        raise TrialFailed("the run has no fidelity scores (is eval.every > 0 and eval.reference set?)")
    by_step = {int(r["step"]): r for r in rows if FIDELITY in r}
    plateau = summary.get("plateau_step")
    at_plateau = by_step.get(plateau) if plateau is not None else None
    at_plateau = at_plateau or (by_step[max(by_step)] if by_step else {})
    stop = summary.get("stopped_on_plateau") or {}
    return {"best_fidelity": summary.get("best_score"), "best_fidelity_selection": summary.get("best_score_selection"),
            "best_step": summary.get("best_step"), "plateau_step": plateau,
            "plateau_reason": summary.get("plateau_reason"), "plateau_fidelity": at_plateau.get(FIDELITY),
            "flexibility": by_step.get(summary.get("best_step"), {}).get(FLEXIBILITY),
            "val_loss": val_loss, "final_step": summary.get("final_step"), "steps_saved": stop.get("steps_saved"),
            "run_dir": summary.get("run_dir")}


def objective_values(sweep: SweepConfig, results: list[dict[str, Any]]) -> list[float]:
    values = []
    for name in OBJECTIVES[sweep.objective]:
        got = [r[name] for r in results]
        if any(v is None for v in got):
            hint = {"val_loss": "validation.every = 0?", "flexibility": "eval.flexibility_prompts empty?"}.get(
                name, "is eval.every > 0 and eval.reference set?")
            raise TrialFailed(f"{name} is missing from a run's results ({hint})")
        values.append(statistics.fmean(got))
    return values


def failure(trial: optuna.Trial, exc: BaseException) -> BaseException:
    """Record why a trial failed (`fail_reason`); return the exception to fail it with."""
    if isinstance(exc, optuna.TrialPruned):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        trial.set_user_attr("interrupted", True)  # not counted: re-running the command redoes it
        trial.set_user_attr("fail_reason", "interrupted (Ctrl-C)")
        return exc
    if isinstance(exc, (TrialFailed, UserError)):
        # Bad settings or a run that stopped: the reason says it all, a traceback would bury it.
        trial.set_user_attr("fail_reason", str(exc)[:1000])
        return TrialFailed(str(exc))
    trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:1000])  # a bug: the log keeps the traceback
    return exc


def set_aside_run(cfg: ExperimentConfig) -> None:
    """A fixed run folder (an arm's `<arm>/seed-<s>`, or a retried trial's) that already holds an
    earlier, unfinished attempt is moved aside first, so the run never writes into it."""
    arms.set_aside(Path(cfg.logging.runs_dir) / str(cfg.logging.experiment) / str(cfg.logging.run_id))


def record_run(trial: optuna.Trial, results: dict[str, dict[str, Any]], cfg: ExperimentConfig,
               summary: dict[str, Any], rows: list[dict[str, float]], seconds: float) -> None:
    """Score one finished run into the trial's `seeds` attr; a run that stopped fails the trial."""
    if summary.get("stopped"):
        raise TrialFailed(f"seed {cfg.training.seed}: {summary['stopped']}")
    results[str(cfg.training.seed)] = seed_result(summary, rows) | {"train_s": round(seconds, 2)}
    trial.set_user_attr("seeds", results)  # per seed, as they finish


def objective_value(sweep: SweepConfig, results: dict[str, dict[str, Any]]) -> float | list[float]:
    values = objective_values(sweep, list(results.values()))
    return values[0] if len(values) == 1 else values
