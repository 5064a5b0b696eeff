"""Sweep workers: each trial is ordinary `train` runs (one per seed) sharing one loaded model.

`run_sweep` (the CLI) creates the study once, then runs `run_worker` in this process or in
K spawned processes; on other machines the same command joins the same PostgreSQL study.
A worker loops: under the gate, fail dead workers' trials (Optuna heartbeat), count the
study's trials, and start one more while fewer than n_trials exist. A trial that raises,
or whose run stops early (NaN loss, exploding norm), is FAIL with its reason and the
study goes on.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from tiframework.config import ExperimentConfig, ModelConfig, with_overrides
from tiframework.evaluation.columns import FIDELITY
from tiframework.sweeps import arms
from tiframework.sweeps import storage as st
from tiframework.sweeps.outcome import failure, objective_value, record_run, set_aside_run
from tiframework.sweeps.population import run_batch
from tiframework.sweeps.population_size import choose_size, population_size
from tiframework.sweeps.pruning import SE_ATTR
from tiframework.sweeps.rolling import run_rolling
from tiframework.sweeps.schema import (
    CategoricalParam,
    IntParam,
    SweepConfig,
    arm_run_overrides,
    load_sweep,
    sweep_dir,
)
from tiframework.sweeps.schema import trial_overrides as make_trial_overrides
from tiframework.sweeps.search import make_pruner, make_sampler

log = logging.getLogger(__name__)


class Runner(Protocol):
    """How a worker loads the frozen model and runs one configuration (tests swap in cheap ones)."""

    def load(self, model: ModelConfig) -> Any: ...
    def run(self, cfg: ExperimentConfig, parts: Any, on_eval: Any) -> dict[str, Any]: ...
    # Optional: `run_population(cfgs, parts, on_evals) -> summaries` trains configurations together
    # (raising `population.PopulationFailed`); a runner without it trains one run at a time.
    # `run_rolling` (see `sweeps.rolling`); `member_memory(sweep, base)` sizes `population: auto`
    # (a runner without it trains one run at a time under `auto`).


# The real runner, imported by name like any other: the sweep machinery loads no torch, and a
# worker whose runner is a test's cheap one never loads the training stack.
TRAIN_RUNNER = "tiframework.sweeps.runner:TrainRunner"


def resolve_runner(ref: str | None) -> Runner:
    """`None` -> real training (`TRAIN_RUNNER`); `"module:Class"` -> a test's runner (importable in
    spawned workers)."""
    module, _, name = (ref or TRAIN_RUNNER).partition(":")
    return getattr(importlib.import_module(module), name)()


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a (spawned) worker needs; plain values so it pickles."""

    sweep_path: str
    overrides: tuple[str, ...]
    storage: str | None
    study_name: str
    n_trials: int
    worker: int = 0
    progress: bool = True
    runner: str | None = None
    workers: int = 1  # processes on this machine (sampler seeding, memory per worker)
    population: int | str | None = None  # runs trained at once: a number, "auto", None: the sweep file's


def budget_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that use up the budget: all but retried dead ones and Ctrl-C'd ones (re-run later)."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if t.number not in retried and not t.user_attrs.get("interrupted")]


def counted(trials: list[FrozenTrial]) -> int:
    return len(budget_trials(trials))


def finished(trials: list[FrozenTrial]) -> int:
    """Counted trials that are over (complete, pruned or failed): the progress bar's position."""
    return sum(t.state.is_finished() for t in budget_trials(trials))


def suggest(trial: optuna.Trial, sweep: SweepConfig) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, p in sweep.space.items():
        if isinstance(p, CategoricalParam):
            params[key] = trial.suggest_categorical(key, p.choices)
        elif isinstance(p, IntParam):
            params[key] = trial.suggest_int(key, p.low, p.high, step=p.step, log=p.log)
        else:
            params[key] = trial.suggest_float(key, p.low, p.high, log=p.log)
    return params


def worker_seed(sweep: SweepConfig, spec: WorkerSpec, loc: st.StudyLocation) -> int | None:
    """`sampler_seed` as given for a lone worker on a journal file (reproducible), else per worker.

    Parallel workers seeded alike would draw the same "random" points (TPE's startup
    trials, the random sampler), so each gets its own stream. The grid is the opposite:
    its seed shuffles the grid, and every worker must see the same order.
    """
    if sweep.sampler == "grid" or sweep.sampler_seed is None or (spec.workers == 1 and loc.journal is not None):
        return sweep.sampler_seed
    return zlib.crc32(f"{sweep.sampler_seed}:{socket.gethostname()}:{os.getpid()}:{spec.worker}".encode())


class SweepProgress:
    """A tqdm bar of finished trials with the best value so far (an Optuna callback too)."""

    def __init__(self, study: optuna.Study, total: int) -> None:
        self.total = total
        self.bar = tqdm(total=total, desc=f"sweep {study.study_name}", unit="trial", dynamic_ncols=True)
        self.refresh(study)

    def refresh(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        self.bar.n = min(finished(trials), self.total)
        self.bar.set_postfix_str(best_text(study, trials), refresh=False)
        self.bar.refresh()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.refresh(study)

    def close(self) -> None:
        self.bar.close()


def best_text(study: optuna.Study, trials: list[FrozenTrial]) -> str:
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if not done:
        return "no complete trial yet"
    if len(study.directions) > 1:
        return f"Pareto front: {len(study.best_trials)} trial(s)"
    best = study.best_trial
    return f"best {best.value:.4f} (trial {best.number})"


class Objective:
    """One trial: suggest a configuration, train it once per seed, return the mean objective."""

    def __init__(self, sweep: SweepConfig, base: ExperimentConfig, study_name: str, runner: Runner,
                 parts: Any, load_s: float, gate: st.TrialGate, worker: int, run_progress: bool) -> None:
        self.sweep, self.base, self.study_name = sweep, base, study_name
        self.runner, self.parts, self.load_s, self.gate = runner, parts, load_s, gate
        self.worker, self.run_progress = worker, run_progress
        self.runs = 0  # runs this worker trained; all but its first reused the loaded model
        self.saved_s = 0.0

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        params = self.begin(trial)
        # Our trial exists and holds its parameters: the next worker may count and ask. (Released
        # before `begin`, a second worker saw this trial without its arm and seed and enqueued the
        # same pair again.)
        self.gate.release()
        saved_before = self.saved_s
        try:
            return self._run_seeds(trial, params)
        except BaseException as exc:
            out = failure(trial, exc)
            if out is exc:
                raise
            raise out from None
        finally:
            trial.set_user_attr("model_load_saved_s", round(self.saved_s - saved_before, 3))

    def begin(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's parameters (suggested, or its enqueued arm and seed) and its first user attrs."""
        params = arms.suggest_arm(trial, self.sweep) if self.sweep.arms else suggest(trial, self.sweep)
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("seeds", {})  # a retried trial inherits its dead predecessor's attrs
        trial.set_user_attr("model_load_s", round(self.load_s, 3))
        return params

    def configs(self, trial: optuna.Trial, params: dict[str, Any]) -> list[ExperimentConfig]:
        """The trial's runs: one per seed (a comparison trial: its arm with its one seed)."""
        seeds: list[int | None] = list(self.sweep.seeds) if self.sweep.seeds else [None]
        if self.sweep.arms:
            seeds = [params[arms.SEED]]
        cfgs = []
        for seed in seeds:
            if self.sweep.arms:
                over = arm_run_overrides(self.sweep, self.study_name, params[arms.ARM], params[arms.SEED],
                                         self.base.logging.runs_dir)
            else:
                over = make_trial_overrides(self.sweep, self.study_name, trial.number, params, seed,
                                            self.base.logging.runs_dir)
            if not self.run_progress:
                over["logging.progress_bar"] = False
            cfgs.append(with_overrides(self.base, over))
        return cfgs

    def count_run(self) -> None:
        self.saved_s += self.load_s if self.runs else 0.0
        self.runs += 1

    def _run_seeds(self, trial: optuna.Trial, params: dict[str, Any]) -> float | list[float]:
        results: dict[str, dict[str, Any]] = {}
        for i, cfg in enumerate(self.configs(trial, params)):
            set_aside_run(cfg)
            rows: list[dict[str, float]] = []
            self.count_run()
            start = time.perf_counter()
            summary = self.runner.run(cfg, self.parts, self.on_eval(trial, rows, report=i == 0))
            record_run(trial, results, cfg, summary, rows, time.perf_counter() - start)
        return objective_value(self.sweep, results)

    def on_eval(self, trial: optuna.Trial, rows: list[dict[str, float]], report: bool):
        # Pruning follows the first seed's curve; later seeds of a surviving trial just run.
        report = report and len(self.sweep.directions) == 1
        ses: dict[str, float] = {}

        def on_eval(row: dict[str, float]) -> None:
            rows.append(row)
            step, value = int(row["step"]), row.get(FIDELITY)
            # Step 0 is the init-text baseline, the same for every setting: nothing to judge yet.
            if not report or step == 0 or value is None or value != value:
                return
            se = row.get(FIDELITY + "_se")
            if se is not None:  # the noise pruner judges a gap against both evaluations' standard errors
                ses[str(step)] = float(se)
                trial.set_user_attr(SE_ATTR, dict(ses))
            trial.report(float(value), step)
            if trial.should_prune():
                reason = getattr(trial.study.pruner, "reasons", {}).get(trial.number) or \
                    f"fidelity {value:.4f} at step {step} is below the {type(trial.study.pruner).__name__}'s bar"
                trial.set_user_attr("pruned_at_step", step)
                trial.set_user_attr("prune_reason", reason)
                raise optuna.TrialPruned(reason)

        return on_eval


def _start_one(study: optuna.Study, sweep: SweepConfig, trials: list[FrozenTrial], n_trials: int) -> bool:
    """Whether to start a trial now (under the gate): a retry is waiting, or the budget is not
    used up. A comparison enqueues the arm x seed pair the trial will run."""
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    if counted(trials) >= n_trials:
        return False
    return not sweep.arms or arms.enqueue_next(study, sweep, budget_trials(trials)) is not None


def _ask(study: optuna.Study, objective: Objective, n_trials: int, most: int) -> list[tuple[optuna.Trial, dict]]:
    """Up to `most` new trials, asked one after another as `_start_one` allows (the caller holds the
    gate); each gets its parameters at once, so the next ask sees them (arms, grid, TPE's liars)."""
    batch: list[tuple[optuna.Trial, dict]] = []
    while len(batch) < most and _start_one(study, objective.sweep, study.get_trials(deepcopy=False), n_trials):
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for study.optimize; the batch beats for its trials itself.
            warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
            trial = study.ask()
        batch.append((trial, objective.begin(trial)))
    return batch


def rolls(sweep: SweepConfig, runner: Runner, pruning: str) -> bool:
    """A search with a pruner and one run per trial trains as a rolling population (`sweeps.rolling`)."""
    return pruning != "none" and not sweep.arms and len(sweep.seeds or [None]) == 1 and hasattr(runner, "run_rolling")


def _run_trials(study: optuna.Study, objective: Objective, gate: st.TrialGate, n_trials: int,
                poll_s: float, progress: SweepProgress | None, population: int = 1,
                storage: optuna.storages.BaseStorage | None = None, rolling: bool = False) -> int:
    """Run trials until the study holds n_trials counted ones and none is left to retry; with
    `population` > 1, as many trials at a time as fill a population of that many runs (`rolling`:
    a member that finishes or is pruned hands its place to the next trial)."""
    ran = 0
    runs_per_trial = 1 if objective.sweep.arms else len(objective.sweep.seeds or [None])

    def ask(n: int) -> list[tuple[optuna.Trial, dict]]:
        with gate:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            return _ask(study, objective, n_trials, n)

    while rolling and population > 1:
        started = run_rolling(study, storage, objective, ask, population, progress)
        ran += started
        if not started:
            break
    while True:
        with gate:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial -> FAIL + a WAITING retry
            trials = study.get_trials(deepcopy=False)
            if population > 1:
                batch = _ask(study, objective, n_trials, max(1, population // runs_per_trial))
            elif _start_one(study, objective.sweep, trials, n_trials):
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True,
                               callbacks=[progress] if progress else None)
                ran += 1
                continue
            else:
                batch = []
        if batch:
            run_batch(study, storage, objective, batch, population, progress)
            ran += len(batch)
            continue
        # Nothing to start. Stay while others run: if one of them dies, its retry is ours to run.
        if not any(t.state == TrialState.RUNNING for t in trials):
            return ran
        if progress:
            progress.refresh(study)
        time.sleep(poll_s)


def _population_size(spec: WorkerSpec, sweep: SweepConfig, runner: Runner,
                     pruner: optuna.pruners.BasePruner | None) -> int:
    """Runs this worker trains at once (`population_size`), logged with the reason."""
    requested = spec.population if spec.population is not None else sweep.population
    pruning = sweep.pruner if pruner is None else type(pruner).__name__
    rolling = rolls(sweep, runner, pruning)
    if not hasattr(runner, "run_rolling" if rolling else "run_population"):
        if requested not in ("auto", 1):
            log.info("worker %d: population 1: this runner trains one run at a time", spec.worker)
        return 1
    size = choose_size(requested, pruner=pruning, memory=None) if pruning != "none" and not rolling else \
        population_size(requested, sweep, sweep.base, spec.workers, rolling=rolling,
                        estimate=getattr(runner, "member_memory", None))
    log.info("worker %d: population %d: %s", spec.worker, size.k, size.reason)
    return size.k


def run_worker(spec: WorkerSpec, pruner: optuna.pruners.BasePruner | None = None) -> dict[str, Any]:
    """Join the (already created) study and run trials until it has `spec.n_trials`."""
    sweep = load_sweep(spec.sweep_path, list(spec.overrides))
    base = sweep.base
    folder = sweep_dir(base, spec.study_name)
    loc = st.locate(spec.storage, folder)
    storage = st.open_storage(loc, sweep)
    study = optuna.load_study(study_name=spec.study_name, storage=storage,
                              sampler=make_sampler(sweep, worker_seed(sweep, spec, loc)),
                              pruner=pruner or make_pruner(sweep, base))
    runner = resolve_runner(spec.runner)
    start = time.perf_counter()
    parts = runner.load(base.model)
    load_s = time.perf_counter() - start
    log.info("worker %d: loaded the frozen model in %.2f s, once; its later runs reuse it", spec.worker, load_s)
    objective = Objective(sweep, base, spec.study_name, runner, parts, load_s,
                          st.open_gate(loc, folder, spec.study_name), spec.worker, run_progress=spec.progress)
    size = _population_size(spec, sweep, runner, pruner)
    rolling = rolls(sweep, runner, sweep.pruner if pruner is None else type(pruner).__name__)
    progress = SweepProgress(study, spec.n_trials) if spec.progress else None
    try:
        ran = _run_trials(study, objective, objective.gate, spec.n_trials,
                          min(5.0, sweep.heartbeat_interval), progress, size, storage, rolling)
    finally:
        if progress:
            progress.close()
    log.info("worker %d: %d trial(s), %d run(s); reusing the model saved %.2f s per run after the first "
             "(%.1f s in all)", spec.worker, ran, objective.runs, load_s, objective.saved_s)
    return {"worker": spec.worker, "trials": ran, "runs": objective.runs, "model_load_s": load_s,
            "model_load_saved_s": objective.saved_s}
