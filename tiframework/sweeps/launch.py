"""`run_sweep`: create the study once, then run K workers (here, or spawned processes).

Several machines join one PostgreSQL study by each running the same command; the study
is created by whichever comes first (`load_if_exists`) and checked against the sweep by
all of them.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import re
import sys
from collections import Counter
from multiprocessing import connection
from pathlib import Path
from typing import Any

import optuna

from tiframework.errors import UserError
from tiframework.logs import configure_logging
from tiframework.sweeps import confirm as cf
from tiframework.sweeps import storage as st
from tiframework.sweeps.schema import ConfirmConfig, SweepConfig, check_study_name, load_sweep, sweep_dir
from tiframework.sweeps.worker import SweepProgress, WorkerSpec, counted, run_worker

log = logging.getLogger(__name__)


def _worker_main(spec: WorkerSpec, results: Any) -> None:
    """Entry point of a spawned worker: it has no logging setup and no CLI to print errors."""
    configure_logging(False, fmt=f"%(levelname)s worker-{spec.worker} %(name)s: %(message)s")
    optuna.logging.disable_default_handler()  # through the filtered root handler, as in the CLI
    optuna.logging.enable_propagation()
    try:
        results.put(run_worker(spec))
    except UserError as exc:
        print(f"error: worker {spec.worker}: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _spawn(spec: WorkerSpec, workers: int, study: optuna.Study, progress: bool) -> list[dict[str, Any]]:
    # spawn, not fork: torch and CUDA do not survive fork, and each worker loads its own model.
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(dataclasses.replace(spec, worker=i, progress=False), results),
                         name=f"sweep-worker-{i}") for i in range(workers)]
    for p in procs:
        p.start()
    bar = SweepProgress(study, spec.n_trials) if progress else None
    out: list[dict[str, Any]] = []
    try:
        while any(p.is_alive() for p in procs):
            while not results.empty():
                out.append(results.get())
            if bar:
                bar.refresh(study)
            connection.wait([p.sentinel for p in procs if p.is_alive()], timeout=2.0)  # back when one ends
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the workers too; they mark their trials interrupted and exit.
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        raise
    finally:
        if bar:
            bar.refresh(study)
            bar.close()
    for p in procs:
        p.join()
    while not results.empty():
        out.append(results.get())
    bad = [f"worker {i} exited with {p.exitcode}" for i, p in enumerate(procs) if p.exitcode]
    if bad:
        log.warning("%s; the study keeps their trials (a dead worker's trial is retried on the next run)",
                    "; ".join(bad))
    return out


@dataclasses.dataclass
class Prepared:
    spec: WorkerSpec
    study: optuna.Study
    loc: st.StudyLocation
    folder: Path  # <runs_dir>/sweeps/<study>: the trials' run folders
    sweep: SweepConfig


def prepare(sweep_path: str | os.PathLike[str], overrides: list[str] | None = None, *,
            storage: str | None = None, n_trials: int | None = None, study_name: str | None = None,
            runner: str | None = None, progress: bool = True, fresh: bool = False,
            population: int | str | None = None) -> Prepared:
    """Check the sweep, open the storage and create (or reuse) the study: all before any worker starts.

    `fresh`: move an existing study of that name (and its run folders) aside first.
    `population`: runs a worker trains at once (a number or "auto"; None: the sweep file's).
    """
    overrides = list(overrides or [])
    sweep = load_sweep(sweep_path, overrides)
    base = sweep.base
    name = check_study_name(study_name or sweep.default_study_name())
    total = sweep.total_trials(n_trials)
    folder = sweep_dir(base, name)
    loc = st.locate(storage, folder)
    if fresh:
        for line in st.move_aside(loc, folder, name) or ["nothing to move: the study does not exist yet"]:
            log.info("--fresh: %s", line)
        if sweep.space:  # a search's confirmation study starts over with it
            confirm_name = cf.confirm_study_name(name)
            confirm_folder = sweep_dir(base, confirm_name)
            for line in st.move_aside(_confirm_location(storage, confirm_folder), confirm_folder, confirm_name):
                log.info("--fresh: %s", line)
    study = st.create_study(sweep, base, st.open_storage(loc, sweep), name, loc)
    log.info("study %s (%s): %d of %d trials exist; runs go to %s",
             name, loc.describe(), counted(study.get_trials(deepcopy=False)), total, folder)
    spec = WorkerSpec(str(sweep.path), tuple(overrides), storage, name, total, 0, progress, runner,
                      population=population)
    return Prepared(spec, study, loc, folder, sweep)


def _confirm_location(storage: str | None, folder: Path) -> st.StudyLocation:
    """A database holds the confirmation study beside the search; a journal file gets its own folder."""
    loc = st.locate(storage, folder)
    return loc if loc.url is not None else st.locate(None, folder)


def run_sweep(sweep_path: str | os.PathLike[str], overrides: list[str] | None = None, *,
              storage: str | None = None, n_trials: int | None = None, workers: int = 1,
              study_name: str | None = None, runner: str | None = None,
              pruner: optuna.pruners.BasePruner | None = None, progress: bool = True,
              fresh: bool = False, population: int | str | None = None,
              confirm: ConfirmConfig | bool | None = None) -> dict[str, Any]:
    """Run a sweep to `n_trials` trials in total (those already in the study count); return a summary.

    `confirm`: run the search's confirmation stage after it (a `ConfirmConfig`, or True/None for
    the sweep file's `confirm:`; False skips it). `runner` ("module:Class") and `pruner` are test
    hooks; `pruner` works in-process only.
    """
    if workers < 1:
        raise UserError("--workers must be at least 1")
    p = prepare(sweep_path, overrides, storage=storage, n_trials=n_trials, study_name=study_name,
                runner=runner, progress=progress, fresh=fresh, population=population)
    if workers == 1:
        results = [run_worker(p.spec, pruner)]
    else:
        if pruner is not None:
            raise ValueError("a pruner object cannot be sent to spawned workers; use workers=1")
        results = _spawn(dataclasses.replace(p.spec, workers=workers), workers, p.study, progress)
    summary = study_summary(p.study, p.loc, p.folder, results)
    stage = p.sweep.confirm if confirm is None or confirm is True else confirm or None
    if stage is not None and p.sweep.space and summary["states"].get("COMPLETE"):
        path = cf.write_confirm_sweep(p.sweep, p.study, stage)
        if path is not None:
            log.info("confirm: training the search's top configurations on fresh seeds (%s)", path)
            summary["confirm"] = run_sweep(path, overrides, storage=storage if p.loc.url else None,
                                           workers=workers, runner=runner, progress=progress,
                                           population=population, confirm=False)
    return summary


def failure_counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """How many failed trials gave each reason, most common first. Reasons that differ only in
    their numbers (a norm, a step) count together, under the first one's text."""
    groups: dict[str, list[str]] = {}
    for t in trials:
        if t.state.name == "FAIL":
            reason = str(t.user_attrs.get("fail_reason") or "worker died or no reason recorded").splitlines()[0][:200]
            groups.setdefault(re.sub(r"\d+(\.\d+)?", "#", reason), []).append(reason)
    counted = {found[0] + ("" if len(set(found)) == 1 else " (numbers vary)"): len(found) for found in groups.values()}
    return dict(sorted(counted.items(), key=lambda kv: -kv[1]))


def all_failed(summary: dict[str, Any]) -> str | None:
    """One line when no trial of the study completed and some failed (the sweep measured nothing)."""
    states = summary.get("states", {})
    if states.get("COMPLETE") or not states.get("FAIL"):
        return None
    reasons = "; ".join(f"{n}x {reason}" for reason, n in summary.get("fail_reasons", {}).items())
    return f"all {states['FAIL']} trial(s) of study {summary['study']} failed: {reasons}"


def study_summary(study: optuna.Study, loc: st.StudyLocation, folder: Path,
                  workers: list[dict[str, Any]]) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    out: dict[str, Any] = {"study": study.study_name, "storage": loc.describe(), "folder": str(folder),
                           "trials": len(trials), "states": dict(states)}
    if states.get("FAIL"):
        out["fail_reasons"] = failure_counts(trials)
    if states.get("COMPLETE") and len(study.directions) == 1:
        best = study.best_trial
        out |= {"best_trial": best.number, "best_value": best.value, "best_params": best.params}
    elif states.get("COMPLETE"):
        out["pareto_trials"] = [t.number for t in study.best_trials]
    loads = [w["model_load_s"] for w in workers if w.get("runs")]
    if loads:
        out["model_load_s"] = round(sum(loads) / len(loads), 3)
        out["model_load_saved_s"] = round(sum(w["model_load_saved_s"] for w in workers), 3)
    return out
