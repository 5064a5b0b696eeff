"""Population batches: a worker takes several trials at once and trains their runs together.

The worker asks the study for the trials (under the trial gate, as for one trial: the
next retries, arm x seed pairs or grid points, or K points TPE proposes with the
running ones as liars), then trains every run of those trials as members of one
`train_population`, through the one frozen model it loaded. Each run is configured,
named and scored exactly as when it trains alone (`Objective.configs`, `outcome`), so
run folders, W&B runs, the study's values and user attributes are the same; only a
`population` user attribute records which trials trained together.

A member that stops (NaN loss, exploding vectors) fails its own trial. Runs that cannot
share the model (`check_compatible`), and the unfinished members of a population that
raised (a member's bad input, an out-of-memory), are run again one at a time, so an
error too fails only its own trial.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from tiframework.config import ExperimentConfig
from tiframework.errors import UserError
from tiframework.sweeps.outcome import failure, objective_value, record_run, set_aside_run
from tiframework.training.population.compatible import check_compatible

log = logging.getLogger(__name__)


class PopulationFailed(Exception):
    """A runner's `run_population` raised (`runner.train_members`); `finished` holds the summaries
    of members already done (by index)."""

    def __init__(self, cause: BaseException, finished: dict[int, dict[str, Any]]):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause, self.finished = cause, finished


class Heartbeats:
    """Heartbeats for every trial of a batch while it trains (`study.optimize` beats for its one
    trial only), so another worker's `fail_stale_trials` does not take them for dead."""

    def __init__(self, storage: BaseStorage | None, trial_ids: list[int]):
        self.storage, self.trial_ids = storage, trial_ids
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeats:
        interval = self.storage.get_heartbeat_interval() if isinstance(self.storage, BaseHeartbeat) else None
        if interval:
            self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
            self._thread.start()
        return self

    def _beat(self, interval: int) -> None:
        while True:
            for trial_id in list(self.trial_ids):  # a rolling population adds and removes trials
                try:
                    self.storage.record_heartbeat(trial_id)
                except optuna.exceptions.UpdateFinishedTrialError:  # told between the copy and the beat
                    pass
            if self._stop.wait(interval):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@dataclass
class Job:
    """One run of a batch's trial (`slot`: the trial's place in the batch)."""

    slot: int
    cfg: ExperimentConfig
    report: bool  # its evaluations are reported to the trial (the trial's first seed)
    rows: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    error: BaseException | None = None
    seconds: float = 0.0
    saved_s: float = 0.0  # model load time this run saved by reusing the loaded model
    together: list[int] = field(default_factory=list)  # trial numbers it trained with, when in a population


def _train_chunk(objective: Any, trials: list[optuna.Trial], chunk: list[Job]) -> None:
    """Train the chunk's runs as one population; what cannot, or did not finish, one at a time."""
    on_evals = [objective.on_eval(trials[j.slot], j.rows, report=j.report) for j in chunk]
    for job in chunk:
        set_aside_run(job.cfg)
        before = objective.saved_s
        objective.count_run()
        job.saved_s = objective.saved_s - before
    numbers = sorted({trials[j.slot].number for j in chunk})
    if len(chunk) > 1:
        try:
            check_compatible([j.cfg for j in chunk])
        except UserError as exc:
            log.info("trials %s cannot train as one population (%s); running their runs one at a time", numbers, exc)
        else:
            _population(objective, chunk, on_evals, numbers)
    for job, on_eval in zip(chunk, on_evals, strict=True):
        if job.summary is None:
            job.rows.clear()
            set_aside_run(job.cfg)  # the failed population's partial folder, if it made one
            start = time.perf_counter()
            try:
                job.summary = objective.runner.run(job.cfg, objective.parts, on_eval)
            except Exception as exc:  # fails this run's trial only
                job.error = exc
            job.seconds = time.perf_counter() - start


def _population(objective: Any, chunk: list[Job], on_evals: list[Any], numbers: list[int]) -> None:
    log.info("training %d run(s) of trial(s) %s as one population", len(chunk), numbers)
    start = time.perf_counter()
    try:
        summaries = dict(enumerate(objective.runner.run_population([j.cfg for j in chunk], objective.parts,
                                                                   on_evals)))
    except PopulationFailed as exc:
        log.warning("the population of trial(s) %s failed (%s); its %d unfinished run(s) run one at a time",
                    numbers, str(exc).splitlines()[0][:300], len(chunk) - len(exc.finished))
        summaries = exc.finished
    seconds = time.perf_counter() - start
    for i, job in enumerate(chunk):
        if i in summaries:
            job.summary, job.seconds, job.together = summaries[i], seconds, numbers


def tell_trial(study: optuna.Study, objective: Any, trial: optuna.Trial, jobs: list[Job]) -> None:
    """Score the trial's runs as a lone trial's, then tell the study (COMPLETE or FAIL)."""
    trial.set_user_attr("model_load_saved_s", round(sum(j.saved_s for j in jobs), 3))
    together = sorted({n for j in jobs for n in j.together})
    if together:
        trial.set_user_attr("population", {"trials": together, "runs": sum(1 for j in jobs if j.together)})
    results: dict[str, dict[str, Any]] = {}
    try:
        for job in jobs:
            if job.error is not None:
                raise job.error
            record_run(trial, results, job.cfg, job.summary or {}, job.rows, job.seconds)
        value = objective_value(objective.sweep, results)
    except Exception as exc:
        out = failure(trial, exc)
        # As `study.optimize` logs a failed trial (the CLI drops expected failures' tracebacks).
        log.warning("Trial %d failed with parameters: %s because of the following error: %r.", trial.number,
                    trial.params, out, exc_info=out)
        study.tell(trial, state=TrialState.FAIL)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a NaN value: tell fails the trial and logs why
        study.tell(trial, value)
    log.info("trial %d finished: %s", trial.number, value)


def run_batch(study: optuna.Study, storage: BaseStorage | None, objective: Any,
              batch: list[tuple[optuna.Trial, dict[str, Any]]], size: int,
              progress: Callable[[optuna.Study, Any], None] | None = None) -> None:
    """Train the batch's trials (their runs in populations of at most `size`) and tell the study.

    Ctrl-C marks every trial not yet told as interrupted (re-run by the next command).
    """
    trials = [t for t, _ in batch]
    jobs = [Job(slot, cfg, report=i == 0) for slot, (trial, params) in enumerate(batch)
            for i, cfg in enumerate(objective.configs(trial, params))]
    told: set[int] = set()
    try:
        with Heartbeats(storage, [t._trial_id for t in trials]):  # Optuna's trial handle: its id is _trial_id
            for first in range(0, len(jobs), size):
                _train_chunk(objective, trials, jobs[first:first + size])
        for slot, trial in enumerate(trials):
            tell_trial(study, objective, trial, [j for j in jobs if j.slot == slot])
            told.add(slot)
            if progress is not None:
                progress(study, trial)
    except KeyboardInterrupt as exc:
        for slot, trial in enumerate(trials):
            if slot not in told:
                failure(trial, exc)
                study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        gc.collect()
