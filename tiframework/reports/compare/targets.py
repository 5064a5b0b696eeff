"""What `tiframework compare` was pointed at, turned into arms of run folders.

- a sweep folder (`runs/sweeps/<study>/`, with its journal.log), a journal file, or a
  database URL (`--study-name` when it holds several studies): the study says which trial
  ran which arm and seed, where its run folder is, and why a trial failed. A search (no
  `arms:`) becomes one arm per configuration, each over its seeds;
- run folders, or folders holding them (globs are expanded): arms are formed by `--by`
  config keys, or by the arm a sweep recorded in each run's config (`logging.arm`).
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from tiframework.errors import UserError
from tiframework.reports.compare.runset import (
    Arm,
    Run,
    RunSet,
    check_keys,
    check_pooling,
    differing_keys,
    find_run_dirs,
    group_by_keys,
    group_by_recorded_arm,
    is_run_dir,
    read_run,
)
from tiframework.reports.sweep.trials import fail_reason, open_study
from tiframework.sweeps.arms import ARM, SEED
from tiframework.sweeps.storage import SIGNATURE_ATTR

_URL = re.compile(r"^[a-z][a-z0-9+]*://")
# Every pair is tested and Holm corrects over all of them: past a dozen arms the report is
# unreadable and no difference survives the correction (a search's trials belong in sweep-report).
MAX_ARMS = 12


def is_study_target(target: str) -> bool:
    path = Path(target)
    return bool(_URL.match(target)) or (path.is_file() and path.suffix == ".log") or (path / "journal.log").is_file()


def expand(targets: list[str]) -> list[Path]:
    """Paths, with globs expanded (quoted globs too); a pattern matching nothing is an error."""
    out: list[Path] = []
    for target in targets:
        if glob.has_magic(target):
            matched = sorted(glob.glob(target))
            if not matched:
                raise UserError(f"{target}: matches no file or folder")
            out += [Path(m) for m in matched]
        elif not Path(target).exists():
            raise UserError(f"{target}: no such run folder, sweep folder or journal file")
        else:
            out.append(Path(target))
    return out


def _split(runs: list[Run], arms: list[Arm]) -> None:
    """Move runs that cannot be compared (unfinished, stopped) to their arm's `excluded`."""
    for arm in arms:
        keep = []
        for run in arm.runs:
            if run.problem:
                arm.excluded.append({"run": str(run.path), "reason": run.problem})
            else:
                keep.append(run)
        arm.runs = keep


def from_run_folders(targets: list[str], by: list[str]) -> RunSet:
    dirs: list[Path] = []
    # A glob such as `runs/*` also matches the report a previous `compare` wrote beside the runs.
    for path in [p for p in expand(targets) if not (p / "comparison.json").is_file()]:
        found = find_run_dirs(path)
        if not found:
            raise UserError(f"{path}: no run folder here (a run folder holds config.yaml and eval.csv)")
        dirs += [d for d in found if d not in dirs]
    runs = [read_run(d) for d in dirs]
    recorded = {r.flat.get("logging.arm") for r in runs}
    groups = {r.flat.get("logging.wandb_group") or r.flat.get("logging.experiment") for r in runs}
    group = next(iter(groups)) if len(groups) == 1 and None not in groups else "compare"
    if by:
        check_keys(by)
        arms, defining = group_by_keys(runs, by), set(by)
    elif None not in recorded and len(recorded) > 1:
        arms = group_by_recorded_arm(runs)
        # The sweep defined its arms by whatever differs between them.
        _, between = differing_keys(arms, set())
        defining = set(between)
        for arm in arms:
            arm.overrides = {k: v[arm.name] for k, v in sorted(between.items()) if arm.name in v}
    else:
        within, _ = differing_keys([Arm("all", {}, runs)], set())
        hint = ", ".join(sorted(within)[:6]) or "none: they all have the same settings"
        raise UserError(f"{len(runs)} run folder(s) and no arms: give --by KEY to form arms by a config key "
                        f"(keys that differ between these runs: {hint})")
    confounders = check_pooling(arms, defining)
    _split(runs, arms)
    common = Path(os.path.commonpath([d.resolve().parent for d in dirs]))
    suffix = "-".join(k.rsplit(".", 1)[-1] for k in by)
    return RunSet(arms, ", ".join(targets), group, sorted(defining), confounders=confounders,
                  default_out=common / ("compare" + (f"-{suffix}" if suffix else "")))


def _run_path(trial: FrozenTrial, seed: Any, default: Path | None) -> Path | None:
    """The run folder a trial wrote for one seed: as recorded, else the sweep's layout here."""
    recorded = (trial.user_attrs.get("seeds", {}).get(str(seed)) or {}).get("run_dir")
    for candidate in (recorded, default):
        if candidate is not None and is_run_dir(Path(candidate)):
            return Path(candidate)
    return None


def _arm_order(trials: list[FrozenTrial]) -> list[str]:
    """The arms in the sweep file's order (kept by the `arm` parameter's choices)."""
    for t in trials:
        if ARM in t.distributions:
            return list(t.distributions[ARM].choices)
    return sorted({t.params[ARM] for t in trials if ARM in t.params})


def _trial_runs(trial: FrozenTrial, folder: Path | None) -> list[tuple[Any, Path | None]]:
    if ARM in trial.params:
        seed = trial.params[SEED]
        default = folder / trial.params[ARM] / f"seed-{seed}" if folder else None
        return [(seed, _run_path(trial, seed, default))]
    seeds = list(trial.user_attrs.get("seeds", {})) or [None]
    return [(s, _run_path(trial, s, None)) for s in seeds]


def _search_arm_name(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in params.items()) or "base"


def from_study(target: str, study_name: str | None, by: list[str]) -> RunSet:
    study, loc = open_study(target, study_name)
    folder = loc.journal.parent if loc.journal is not None else None
    out = folder / "compare" if folder is not None else Path(f"compare-{study.study_name}")
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    sig = study.user_attrs.get(SIGNATURE_ATTR) or {}
    is_arms = any(ARM in t.params for t in trials)
    order = _arm_order(trials) if is_arms else []
    arms: dict[str, Arm] = {name: Arm(name, dict((sig.get("arms") or {}).get(name, {}))) for name in order}
    runs: list[Run] = []
    for t in trials:
        if t.number in retried:
            continue  # a dead worker's trial; its retry is the one that counts
        name = t.params[ARM] if is_arms else _search_arm_name(t.params)
        arm = arms.setdefault(name, Arm(name, dict(t.params)))
        for seed, path in _trial_runs(t, folder):
            label = f"trial {t.number}" + (f", seed {seed}" if seed is not None else "")
            if t.state != TrialState.COMPLETE:
                why = fail_reason(t, trials) if t.state == TrialState.FAIL else t.state.name.lower()
                arm.excluded.append({"run": label, "reason": why})
            elif path is None:
                arm.excluded.append({"run": label, "reason": "its run folder is not on this machine"})
            else:
                run = read_run(path)
                run.arm = name
                arm.runs.append(run)
                runs.append(run)
    if by:  # regroup the study's runs by other keys
        check_keys(by)
        grouped = group_by_keys(runs, by)
        confounders = check_pooling(grouped, set(by))
        _split(runs, grouped)
        return RunSet(grouped, target, study.study_name, sorted(by), default_out=out, confounders=confounders,
                      notes=_not_finished(arms.values()))
    listed = [a for a in arms.values() if a.runs or a.excluded]
    defining = {k for a in listed for k in a.overrides}
    confounders = check_pooling(listed, defining)
    _split(runs, listed)
    return RunSet(listed, target, study.study_name, sorted(defining), default_out=out, confounders=confounders)


def _not_finished(arms: Any) -> list[str]:
    return [f"arm {a.name}: {e['run']} left out ({e['reason']})" for a in arms for e in a.excluded]


def load_runset(targets: list[str], by: list[str] | None = None, study_name: str | None = None) -> RunSet:
    """Arms of run folders from a sweep folder / study, or from run folders (see the module doc)."""
    by = list(by or [])
    if not targets:
        raise UserError("compare: give a sweep folder, a study (journal file or database URL) or run folders")
    if len(targets) == 1 and is_study_target(targets[0]):
        runset = from_study(targets[0], study_name, by)
    elif study_name:
        raise UserError("--study-name goes with one sweep folder, journal file or database URL")
    else:
        runset = from_run_folders(targets, by)
    if len(runset.arms) > MAX_ARMS:
        raise UserError(f"{runset.source}: {len(runset.arms)} arms ({', '.join(a.name for a in runset.arms[:4])}, "
                        f"...) would make {len(runset.arms) * (len(runset.arms) - 1) // 2} pairs to test; compare at "
                        f"most {MAX_ARMS} (a sweep with arms:, fewer run folders, or other --by keys)")
    if len([a for a in runset.arms if a.runs]) < 2:
        raise UserError(f"{runset.source}: fewer than two arms with finished runs ("
                        + "; ".join(f"{a.name}: {len(a.runs)} run(s)" for a in runset.arms)
                        + "); a comparison needs two")
    return runset
