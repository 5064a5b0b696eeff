"""How a search proposes and stops trials: the sampler and the pruner a sweep file names.

- samplers: TPE (with constant liar, so parallel workers and populations do not all sample
  the point the running trials hold), random, or the grid (`Grid`, Optuna's without its
  `study.stop()`); a comparison's trials are enqueued with their arm and seed, nothing sampled;
- pruners: median, hyperband (resources are optimizer steps) or `noise` (`sweeps.pruning`).
"""

from __future__ import annotations

import warnings

import optuna

from tiframework.config import ExperimentConfig
from tiframework.sweeps.pruning import NoisePruner
from tiframework.sweeps.schema import CategoricalParam, SweepConfig


class Grid(optuna.samplers.GridSampler):
    """Optuna's grid, without its `study.stop()` once the grid is used up: that works only inside
    `study.optimize`, and a population batch tells its trials outside it. The worker stops
    asking by the trial count anyway (a grid's `total_trials` is at most its size)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(sweep: SweepConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sweep.arms:  # every trial is enqueued with its arm and seed: nothing to sample
            return optuna.samplers.RandomSampler(seed=seed)
        if sweep.sampler == "grid":
            grid = {k: p.choices for k, p in sweep.space.items() if isinstance(p, CategoricalParam)}
            return Grid(grid, seed=seed)
        if sweep.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # constant_liar: parallel workers do not all sample the same point while trials run.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(sweep: SweepConfig, base: ExperimentConfig) -> optuna.pruners.BasePruner:
    if sweep.pruner == "noise":
        return NoisePruner(sweep.pruner_alpha, sweep.pruner_warmup_steps, sweep.directions[0] == "maximize")
    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=sweep.pruner_startup_trials,
                                           n_warmup_steps=sweep.pruner_warmup_steps)
    if sweep.pruner == "hyperband":
        # Resources are optimizer steps: the first rung is the first evaluation.
        steps = sweep.space.get("training.max_steps")
        longest = base.training.max_steps
        if steps is not None:
            longest = max(steps.choices) if isinstance(steps, CategoricalParam) else int(steps.high)
        low = max(1, base.eval.every)
        return optuna.pruners.HyperbandPruner(min_resource=low, max_resource=max(longest, low + 1))
    return optuna.pruners.NopPruner()
