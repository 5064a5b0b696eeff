"""`pruner: noise`: stop a trial only when it is worse than the best trial by more than the noise.

The median pruner stops a trial whose fidelity at a step is below the median of earlier
trials there, on one noisy evaluation: a run's held-out fidelity at one step is a mean over
a dozen images, with a standard error (`eval/clip_fidelity_se` in eval.csv) that is often as
large as the differences the search is after. This pruner compares the trial with the best
trial at the same optimizer step and stops it only when a one-sided z-test on the two
evaluations' standard errors says it is worse (p below `alpha`):

    z = (best - value) / sqrt(se_best^2 + se^2),   p = P(Z > z)   (scipy.stats.norm)

So a trial is stopped for being clearly behind, not for landing on the unlucky side of its
own eval images. The worker stores each evaluation's standard error in the trial's user
attribute `fidelity_se` (step -> se) before reporting it, and records the pruner's reason in
`prune_reason`. Without standard errors (runs from before eval.csv carried them) nothing is
pruned: there is nothing to judge the noise by.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import norm

SE_ATTR = "fidelity_se"


class NoisePruner(optuna.pruners.BasePruner):
    """Prune when worse than the best trial at the same step, beyond both evaluations' standard errors."""

    def __init__(self, alpha: float = 0.01, n_warmup_steps: int = 0, maximize: bool = True) -> None:
        self.alpha, self.n_warmup_steps, self.maximize = alpha, n_warmup_steps, maximize
        self.reasons: dict[int, str] = {}  # trial number -> why it was pruned (read by the worker)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        value, se = trial.intermediate_values[step], _se(trial, step)
        best = self._best_at(study, trial, step)
        if best is None or se is None:
            return False
        other, other_value, other_se = best
        gap = (other_value - value) if self.maximize else (value - other_value)
        spread = math.sqrt(se ** 2 + other_se ** 2)
        if gap <= 0 or spread == 0:
            return False
        p = float(norm.sf(gap / spread))
        if p >= self.alpha:
            return False
        self.reasons[trial.number] = (
            f"fidelity {value:.4f} ± {se:.4f} (SE) at step {step} is below trial {other.number}'s "
            f"{other_value:.4f} ± {other_se:.4f} by {gap:.4f}: one-sided z-test p {p:.2g} < {self.alpha:g}")
        return True

    def _best_at(self, study: optuna.Study, trial: FrozenTrial,
                 step: int) -> tuple[FrozenTrial, float, float] | None:
        """The best other trial at `step` that recorded a standard error there."""
        found = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
            if t.number == trial.number or step not in t.intermediate_values:
                continue
            se = _se(t, step)
            if se is not None and math.isfinite(t.intermediate_values[step]):
                found.append((t, t.intermediate_values[step], se))
        if not found:
            return None
        return max(found, key=lambda f: f[1]) if self.maximize else min(found, key=lambda f: f[1])


def _se(trial: FrozenTrial, step: int) -> float | None:
    se: Any = (trial.user_attrs.get(SE_ATTR) or {}).get(str(step))
    return float(se) if se is not None and math.isfinite(float(se)) else None
