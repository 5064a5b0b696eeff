"""Comparison sweeps (`arms:`): every arm x seed is one Optuna trial, run in a fixed order.

Nothing is searched, so no sampler picks the next configuration. Instead the worker that
holds the trial gate enqueues the first (arm, seed) pair no counted trial has taken yet,
seed by seed (seed 0 of every arm, then seed 1, ...): a study cut short, or run with a
smaller `--n-trials`, still holds matched seeds across arms, which is what a paired test
needs. The pair is stored as the trial's parameters `arm` and `seed` (so optuna-dashboard
and `tiframework compare` can read them) and in its user attributes with the arm's overrides.
A dead worker's trial is retried with the same parameters by Optuna's heartbeat callback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tiframework.sweeps.schema import SweepConfig

log = logging.getLogger(__name__)
ARM, SEED = "arm", "seed"


def arm_grid(sweep: SweepConfig) -> list[tuple[str, int]]:
    """Every (arm, seed) pair in run order: seed-major, arms in the sweep file's order."""
    return [(arm, seed) for seed in sweep.seeds or [] for arm in sweep.arms or {}]


def next_pair(sweep: SweepConfig, taken_by: list[FrozenTrial]) -> tuple[str, int] | None:
    """The first pair of `arm_grid` that none of `taken_by` (the counted trials) holds."""
    taken = {(t.params.get(ARM), t.params.get(SEED)) for t in taken_by}
    return next((pair for pair in arm_grid(sweep) if pair not in taken), None)


def enqueue_next(study: optuna.Study, sweep: SweepConfig, taken_by: list[FrozenTrial]) -> tuple[str, int] | None:
    """Enqueue the next free pair (the caller holds the trial gate); None when all are taken."""
    pair = next_pair(sweep, taken_by)
    if pair is not None:
        study.enqueue_trial({ARM: pair[0], SEED: pair[1]}, skip_if_exists=False)
    return pair


def suggest_arm(trial: optuna.Trial, sweep: SweepConfig) -> dict[str, Any]:
    """The trial's (enqueued, so fixed) arm and seed, declared with every choice for the dashboard."""
    arm = trial.suggest_categorical(ARM, list(sweep.arms or {}))
    seed = trial.suggest_categorical(SEED, list(sweep.seeds or []))
    trial.set_user_attr(ARM, arm)
    trial.set_user_attr(SEED, seed)
    trial.set_user_attr("overrides", dict((sweep.arms or {})[arm]))
    return {ARM: arm, SEED: seed}


def set_aside(run_dir: Path) -> Path | None:
    """Move an earlier attempt's folder (a dead worker's, a Ctrl-C'd one) out of the way.

    An arm's run folder is named by arm and seed, not by trial, so a retried trial would
    otherwise write into the partial folder of the attempt it replaces. The old folder is
    kept, hidden, as `.seed-<s>.attempt-<k>` beside it (reports skip hidden folders).
    """
    if not run_dir.exists():
        return None
    k = 1
    while (old := run_dir.with_name(f".{run_dir.name}.attempt-{k}")).exists():
        k += 1
    run_dir.rename(old)
    log.warning("%s held an earlier, unfinished attempt; moved it to %s", run_dir, old.name)
    return old
