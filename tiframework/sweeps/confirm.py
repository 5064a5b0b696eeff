"""The confirmation stage of a search (`confirm:` in a sweep file, `tiframework sweep --confirm`).

A search reports the best of many noisy trials, and the maximum of noisy scores is biased
upward (the winner's curse): with 40 single-seed trials and a seed-to-seed spread of ~0.05
in held-out fidelity, the top trial's score sits about two spreads above its true value.
So after the search its top-K configurations, and the base experiment's own settings as
arm `baseline`, are trained again on N fresh training seeds (none of the search's), each
seed scored on its own eval images (`eval.seeds_follow_training_seed`), as an ordinary
comparison sweep: study `<study>-confirm`, run folders `<runs>/sweeps/<study>-confirm/<arm>/seed-<s>/`,
arms named `trial-<n>` after the search trial they confirm. `sweep-report` reads it back
(`tiframework.reports.sweep.confirmed`) and leads with the confirmed answer.

The comparison's sweep file is written once, to `<study>-confirm/sweep.yaml`, when the
search is over; re-running the command reuses it (the chosen configurations do not move
if the search later grows) and resumes the comparison.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from tiframework.errors import UserError
from tiframework.fileio import atomic_write_text
from tiframework.sweeps.schema import ConfirmConfig, SweepConfig, sweep_dir

log = logging.getLogger(__name__)
BASELINE = "baseline"
SUFFIX = "-confirm"
SWEEP_FILE = "sweep.yaml"


def confirm_study_name(study: str) -> str:
    return study + SUFFIX


def parse_confirm(text: str) -> ConfirmConfig:
    """`--confirm TOPxSEEDS` (e.g. `3x5`): the top 3 configurations on 5 fresh seeds, with the baseline."""
    top, sep, seeds = text.lower().partition("x")
    try:
        return ConfirmConfig(top=int(top), seeds=int(seeds)) if sep else ConfirmConfig(top=int(top))
    except ValueError:
        raise UserError(f"--confirm {text!r}: give TOPxSEEDS, e.g. 3x5 (top >= 1, seeds >= 2)") from None


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The K best complete trials by objective value, one per distinct configuration."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    out: list[FrozenTrial] = []
    seen: list[dict[str, Any]] = []
    for t in sorted(done, key=lambda t: (sign * t.value, t.number)):
        if t.params not in seen:
            seen.append(t.params)
            out.append(t)
        if len(out) == k:
            break
    return out


def fresh_seeds(sweep: SweepConfig, n: int) -> list[int]:
    """N training seeds after every seed the search used (so their eval images are new too)."""
    used = list(sweep.seeds or [sweep.base.training.seed])
    start = max(used) + 1
    return list(range(start, start + n))


def confirm_sweep(sweep: SweepConfig, study: str, top: list[FrozenTrial], confirm: ConfirmConfig) -> dict[str, Any]:
    """The comparison sweep file's content: one arm per top trial (and the baseline), fresh seeds."""
    arms: dict[str, dict[str, Any]] = {f"trial-{t.number}": dict(t.params) for t in top}
    if confirm.baseline:
        arms[BASELINE] = {}
    return {
        "experiment": str((sweep.path.parent / sweep.experiment).resolve()),
        # Each fresh seed is scored on its own eval images: the confirmed score is then an average
        # over images as well as seeds, not a verdict about one fixed image set.
        "overrides": dict(sweep.overrides) | {"eval.seeds_follow_training_seed": True},
        "arms": arms, "seeds": fresh_seeds(sweep, confirm.seeds), "objective": sweep.objective,
        "direction": sweep.directions[0], "study_name": confirm_study_name(study),
        "population": sweep.population, "search": {"study": study, "search_values": {
            f"trial-{t.number}": t.value for t in top}},
    }


def write_confirm_sweep(sweep: SweepConfig, study: optuna.Study, confirm: ConfirmConfig) -> Path | None:
    """`<study>-confirm/sweep.yaml`, written once; None when the search has nothing to confirm yet."""
    folder = sweep_dir(sweep.base, confirm_study_name(study.study_name))
    path = folder / SWEEP_FILE
    if path.is_file():
        log.info("confirm: reusing %s (its configurations were chosen when the search ended)", path)
        return path
    if study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        log.warning("confirm: the search still has running trials; re-run the command when they are done")
        return None
    top = top_trials(study, confirm.top)
    if not top:
        log.warning("confirm: no complete trial to confirm")
        return None
    content = confirm_sweep(sweep, study.study_name, top, confirm)
    search = content.pop("search")
    text = ("# Written by `tiframework sweep` after the search " + search["study"] + ": its top configurations "
            "(and the baseline) on fresh seeds.\n# Search values (the winner's curse is search minus confirmed): "
            + ", ".join(f"{k} {v:.4f}" for k, v in search["search_values"].items()) + "\n")
    atomic_write_text(path, text + yaml.safe_dump(content, sort_keys=False))
    log.info("confirm: %d configuration(s)%s x %d fresh seeds -> %s", len(top),
             " + baseline" if confirm.baseline else "", confirm.seeds, path)
    return path
