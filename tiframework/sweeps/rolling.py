"""Rolling populations: a search with a pruner still trains K trials at a time.

A pruned or finished member hands its place to the next trial the study proposes (asked
under the trial gate when the place frees, so TPE sees every result told so far and the
running trials as its liars), which joins the running population at its own step 0
(`PopulationModule.join`). Each trial is one run (a search with `seeds:` uses whole-trial
batches instead), configured, named, scored and told exactly as when it trains alone: a
pruned trial is PRUNED with its `pruned_at_step` and `prune_reason`, a finished one gets
its value and `seeds` attribute from `outcome`, a failed one its `fail_reason`. The pruner
judges each evaluation against the trials told so far and, for `pruner: noise`, the running
ones too.

A runner's `run_rolling(cfgs, parts, on_evals, on_leave)` trains the first members, calls
`on_evals[i](row)` for member i's evaluations (True back: stop that member now, it was
pruned) and `on_leave(i, summary, error)` when member i leaves, which returns the next
member's `(cfg, on_eval)` to join, or None.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from tiframework.sweeps.outcome import failure, set_aside_run
from tiframework.sweeps.population import Heartbeats, Job, tell_trial

log = logging.getLogger(__name__)
Ask = Callable[[int], list[tuple[optuna.Trial, dict[str, Any]]]]  # up to n new (trial, params), under the gate


@dataclass
class Slot:
    trial: optuna.Trial
    job: Job
    on_eval: Callable[[dict[str, float]], bool]
    pruned: optuna.TrialPruned | None = None
    told: bool = False
    start: float = 0.0


class Rolling:
    """The sweep's side of a rolling population: slots by member index, telling, asking the next."""

    def __init__(self, study: optuna.Study, objective: Any, ask: Ask, trial_ids: list[int],
                 progress: Callable[[optuna.Study, Any], None] | None) -> None:
        self.study, self.objective, self.ask, self.trial_ids, self.progress = study, objective, ask, trial_ids, progress
        self.slots: list[Slot] = []

    def open(self, trial: optuna.Trial, params: dict[str, Any]) -> Slot:
        cfg = self.objective.configs(trial, params)[0]
        set_aside_run(cfg)
        self.objective.count_run()
        job = Job(len(self.slots), cfg, report=True)
        raw = self.objective.on_eval(trial, job.rows, report=True)
        slot = Slot(trial, job, lambda row: False, start=time.perf_counter())

        def on_eval(row: dict[str, float]) -> bool:
            try:
                raw(row)
            except optuna.TrialPruned as exc:  # the member leaves; its trial is told PRUNED
                slot.pruned = exc
                return True
            return False

        slot.on_eval = on_eval
        self.slots.append(slot)
        self.trial_ids.append(trial._trial_id)  # Optuna's trial handle: its id is _trial_id
        return slot

    def on_leave(self, index: int, summary: dict[str, Any] | None,
                 error: BaseException | None = None) -> tuple[Any, Callable[[dict[str, float]], bool]] | None:
        slot = self.slots[index]
        slot.job.summary, slot.job.error = summary, error
        slot.job.seconds = time.perf_counter() - slot.start
        self.tell(slot)
        nxt = self.ask(1)
        if not nxt:
            return None
        new = self.open(*nxt[0])
        log.info("trial %d joins the population in trial %d's place", new.trial.number, slot.trial.number)
        return new.job.cfg, new.on_eval

    def tell(self, slot: Slot) -> None:
        if slot.told:
            return
        slot.told = True
        self.trial_ids.remove(slot.trial._trial_id)  # no more heartbeats for it
        if slot.pruned is not None:
            self.study.tell(slot.trial, state=TrialState.PRUNED)
            log.info("trial %d pruned: %s", slot.trial.number, slot.pruned)
        else:
            tell_trial(self.study, self.objective, slot.trial, [slot.job])
        if self.progress is not None:
            self.progress(self.study, slot.trial)

    def fail_untold(self, exc: BaseException) -> None:
        for slot in self.slots:
            if not slot.told:
                slot.told = True
                failure(slot.trial, exc)
                self.study.tell(slot.trial, state=TrialState.FAIL)


def run_rolling(study: optuna.Study, storage: BaseStorage | None, objective: Any, ask: Ask, size: int,
                progress: Callable[[optuna.Study, Any], None] | None = None) -> int:
    """Train trials K at a time until `ask` has none left; return how many trials ran."""
    first = ask(size)
    if not first:
        return 0
    trial_ids: list[int] = []
    rolling = Rolling(study, objective, ask, trial_ids, progress)
    slots = [rolling.open(trial, params) for trial, params in first]
    log.info("training trial(s) %s as a rolling population of %d", [s.trial.number for s in slots], size)
    try:
        with Heartbeats(storage, trial_ids):
            objective.runner.run_rolling([s.job.cfg for s in slots], objective.parts, [s.on_eval for s in slots],
                                         rolling.on_leave)
    except BaseException as exc:
        rolling.fail_untold(exc)
        if not isinstance(exc, Exception):
            raise  # Ctrl-C: its trials are marked interrupted, re-run by the next command
        log.warning("the rolling population failed (%s); its unfinished trials are FAIL", str(exc)[:300])
    return len(rolling.slots)
