"""Sweeps that train several trials' runs at once (`--population K`): the same study, run
folders and values as one at a time; TPE asked for K trials at once; a failing member fails
its own trial only; a killed population worker's trials are retried; the automatic K.

Cheap runners (no model) check the worker's bookkeeping; the equivalence and failure tests
train for real on the tiny preset. Spawned workers import the runners from this module.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_arms import arm_sweep

from sweep_fixtures import VPT, FakeRunner, categorical, load_study, states, write_experiment, write_sweep
from tiframework.errors import UserError

RUNNERS = __name__


class FakePopulationRunner(FakeRunner):
    """FakeRunner's scores, with a `run_population` that logs the size of each population."""

    def run_population(self, cfgs: list[Any], parts: Any, on_evals: list[Any]) -> list[dict[str, Any]]:
        log = Path(cfgs[0].logging.runs_dir) / "populations.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(json.dumps([c.logging.run_id for c in cfgs]) + "\n")
        return [self.run(cfg, parts, on_eval) for cfg, on_eval in zip(cfgs, on_evals, strict=True)]


class NanMemberRunner(FakePopulationRunner):
    """The member with VPT 2 stops on a non-finite loss, as `train_population` reports it."""

    def run_population(self, cfgs, parts, on_evals):
        out = super().run_population(cfgs, parts, on_evals)
        for cfg, summary in zip(cfgs, out, strict=True):
            if cfg.embedding.vectors_per_token == 2:
                summary["stopped"] = "non-finite loss at step 3"
        return out


class SleepyPopulationRunner(FakePopulationRunner):
    """Hangs mid-population (after announcing itself), so a test can kill its worker."""

    def run_population(self, cfgs, parts, on_evals):
        marker = Path(cfgs[0].logging.runs_dir) / "sleeping"
        marker.write_text(str(os.getpid()))
        time.sleep(600)
        raise AssertionError("should have been killed")


def populations(root: Path) -> list[list[str]]:
    file = root / "runs" / "sweeps" / "populations.jsonl"
    return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    return write_experiment(tmp_path)


# --- choosing K ----------------------------------------------------------------------------------


def test_population_size_choice():
    from tiframework.sweeps.population_size import CPU_SWEET_SPOT, GPU_MOST, MemberMemory, choose_size

    mib, gib = 2**20, 2**30
    cpu = MemberMemory("cpu", free=20 * gib, weights=0, per_member=100 * mib)
    assert choose_size("auto", pruner="none", memory=cpu).k == CPU_SWEET_SPOT
    tight = MemberMemory("cpu", free=500 * mib, weights=0, per_member=100 * mib)  # 70% of 500 MiB: 3 members
    assert choose_size("auto", pruner="none", memory=tight).k == 3
    assert choose_size("auto", pruner="none", memory=tight, workers=2).k == 1  # two workers share the RAM
    gpu = MemberMemory("cuda", free=40 * gib, weights=2 * gib, per_member=1 * gib)  # (40 - 2) x 0.7 = 26.6
    assert choose_size("auto", pruner="none", memory=gpu).k == GPU_MOST
    small = MemberMemory("cuda", free=8 * gib, weights=2 * gib, per_member=1 * gib)  # (8 - 2) x 0.7 = 4.2
    got = choose_size("auto", pruner="none", memory=small)
    assert got.k == 4 and "memory allows 4" in got.reason
    assert choose_size("auto", pruner="none", memory=MemberMemory("cuda", gib, 2 * gib, gib)).k == 1
    assert choose_size(5, pruner="none", memory=None).k == 5
    pruned = choose_size(5, pruner="median", memory=cpu)
    assert pruned.k == 1 and "pruning is on (pruner: median)" in pruned.reason and "--population 5" in pruned.reason
    assert choose_size("auto", pruner="none", memory=None, why_no_memory="x").k == 1


def test_auto_asks_the_runner_for_memory(tmp_path, experiment, monkeypatch):
    """`auto` sizes from the runner's `member_memory`, estimated at the sweep's largest VPT; a
    runner without one (a test's cheap runner) trains one run at a time."""
    from tiframework.sizing.memory import StepMemory
    from tiframework.sweeps import runner as real
    from tiframework.sweeps.population_size import CPU_SWEET_SPOT, population_size
    from tiframework.sweeps.schema import load_sweep

    mib, asked = 2**20, []

    def fake_estimate(cfg, size, batch, machine):
        asked.append((cfg.embedding.vectors_per_token, size, batch, machine.device))
        return StepMemory(300 * mib, {"Parameter": 100 * mib}, "estimated", None)

    monkeypatch.setattr(real, "estimate_step_memory", fake_estimate)
    sweep = load_sweep(write_sweep(tmp_path, pruner="none", space={VPT: categorical(1, 4)}))
    memory = real.TrainRunner().member_memory(sweep, sweep.base)
    assert asked == [(4, 32, 1, "cpu")] and memory.per_member == 200 * mib  # the base experiment's max_side
    assert memory.free > 0 and memory.weights == 0  # on the CPU the loaded model is already in RAM
    sized = population_size("auto", sweep, sweep.base, estimate=real.TrainRunner().member_memory)
    assert sized.k == min(CPU_SWEET_SPOT, int(sized.reason.split("memory allows ")[1].split()[0]))
    none = population_size("auto", sweep, sweep.base, estimate=None)
    assert none.k == 1 and "no memory estimate (this runner gives none)" in none.reason
    assert len(asked) == 2  # `estimate=None` asked nothing


def test_population_argument():
    from tiframework.sweeps.population_size import parse_population

    assert parse_population("auto") == "auto" and parse_population("4") == 4
    for bad in ("0", "-2", "many"):
        with pytest.raises(UserError, match="--population"):
            parse_population(bad)


def test_sweep_file_population_key_and_the_command_line_wins(tmp_path, experiment):
    from tiframework.sweeps.launch import run_sweep
    from tiframework.sweeps.schema import load_sweep

    assert load_sweep(write_sweep(tmp_path)).population == "auto"
    with pytest.raises(UserError, match="population"):
        load_sweep(write_sweep(tmp_path, population=0))
    sweep = write_sweep(tmp_path, sampler="grid", n_trials=None, population=3,
                        space={VPT: categorical(1, 2, 3, 4)})
    assert run_sweep(sweep, runner=f"{RUNNERS}:FakePopulationRunner", progress=False)["states"] == {"COMPLETE": 4}
    assert [len(p) for p in populations(tmp_path)] == [3]  # the last trial alone: no population of one
    again = run_sweep(sweep, runner=f"{RUNNERS}:FakePopulationRunner", progress=False, population=1, fresh=True)
    assert again["states"] == {"COMPLETE": 4} and len(populations(tmp_path)) == 1  # one at a time: no new population


# --- the worker's bookkeeping (cheap runners) --------------------------------------------------


def test_tpe_asks_for_k_trials_at_once_and_tells_each(tmp_path, experiment):
    from tiframework.sweeps.launch import run_sweep

    space = {VPT: categorical(1, 2, 3, 4), "training.learning_rate": {"type": "float", "low": 0.001, "high": 0.1}}
    summary = run_sweep(write_sweep(tmp_path, n_trials=5, sampler="tpe", space=space), population=2,
                        runner=f"{RUNNERS}:FakePopulationRunner", progress=False)
    assert summary["states"] == {"COMPLETE": 5}
    assert populations(tmp_path) == [["trial-0", "trial-1"], ["trial-2", "trial-3"]]  # then trial 4 alone
    trials = sorted(load_study(tmp_path, "s").trials, key=lambda t: t.number)
    for t in trials:
        seed = t.user_attrs["seeds"]["0"]
        assert t.value == pytest.approx(0.5 + 0.01 * t.params[VPT] + 0.001 * 4)  # its own config's score
        assert seed["run_dir"].endswith(f"trial-{t.number}") and t.user_attrs["worker"] == 0
        assert set(t.intermediate_values) == {2, 4}
    together = [t.user_attrs.get("population", {}).get("trials") for t in trials]
    assert together == [[0, 1], [0, 1], [2, 3], [2, 3], None]


def test_a_search_with_seeds_fills_the_population_with_whole_trials(tmp_path, experiment):
    from tiframework.sweeps.launch import run_sweep

    sweep = write_sweep(tmp_path, sampler="grid", n_trials=None, seeds=[0, 1], space={VPT: categorical(1, 2, 3)})
    run_sweep(sweep, population=4, runner=f"{RUNNERS}:FakePopulationRunner", progress=False)
    assert populations(tmp_path) == [["trial-0-seed-0", "trial-0-seed-1", "trial-1-seed-0", "trial-1-seed-1"],
                                     ["trial-2-seed-0", "trial-2-seed-1"]]
    assert states(load_study(tmp_path, "s")) == ["COMPLETE"] * 3


def test_a_stopped_member_fails_only_its_own_trial(tmp_path, experiment):
    from tiframework.sweeps.launch import run_sweep

    sweep = write_sweep(tmp_path, sampler="grid", n_trials=None, space={VPT: categorical(1, 2, 3)})
    summary = run_sweep(sweep, population=3, runner=f"{RUNNERS}:NanMemberRunner", progress=False)
    assert summary["states"] == {"COMPLETE": 2, "FAIL": 1}
    assert len(populations(tmp_path)) == 1
    for t in load_study(tmp_path, "s").trials:
        if t.params[VPT] == 2:
            assert t.state.name == "FAIL" and t.user_attrs["fail_reason"] == "seed 0: non-finite loss at step 3"
        else:
            assert t.state.name == "COMPLETE"


def test_pruning_sweeps_run_one_trial_at_a_time(tmp_path, experiment, caplog):
    from tiframework.sweeps.launch import run_sweep

    caplog.set_level("INFO", logger="tiframework")
    sweep = write_sweep(tmp_path, n_trials=2, pruner="median", space={VPT: categorical(1, 2)})
    assert run_sweep(sweep, population=4, runner=f"{RUNNERS}:FakePopulationRunner",
                     progress=False)["states"] == {"COMPLETE": 2}
    assert populations(tmp_path) == []
    assert "population 1: pruning is on (pruner: median)" in caplog.text


@pytest.mark.slow
def test_a_killed_population_worker_trials_are_failed_and_retried(tmp_path, experiment):
    """Both trials of the killed worker's population are retried, with their own parameters."""
    import dataclasses

    from sweep_fixtures import kill_mid_trial
    from tiframework.sweeps.launch import prepare
    from tiframework.sweeps.worker import counted, run_worker

    sweep = arm_sweep(tmp_path, seeds=[0, 1], heartbeat_interval=1, grace_period=3, population=2)
    prepared = prepare(sweep, runner=f"{RUNNERS}:SleepyPopulationRunner", progress=False)
    kill_mid_trial(prepared, tmp_path / "runs" / "sweeps" / "sleeping")
    assert states(prepared.study) == ["RUNNING", "RUNNING"]  # both trials of the population were alive
    run_worker(dataclasses.replace(prepared.spec, runner=f"{RUNNERS}:FakePopulationRunner"))
    trials = sorted(load_study(tmp_path, "s").get_trials(), key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"] + ["COMPLETE"] * 4
    retried = {(t.params["arm"], t.params["seed"]) for t in trials if t.system_attrs.get("failed_trial") in (0, 1)}
    assert retried == {(trials[0].params["arm"], 0), (trials[1].params["arm"], 0)}
    assert counted(trials) == 4
    done = {(t.params["arm"], t.params["seed"]) for t in trials if t.state.name == "COMPLETE"}
    assert done == {(a, s) for a in ("small", "large") for s in (0, 1)}  # every pair once


# --- real training on the tiny preset ----------------------------------------------------------


def _records(root: Path, study: str) -> list[dict[str, Any]]:
    """What a study holds of each trial, paths relative to the runs folder, timings dropped."""
    runs = str(root / "runs")
    out = []
    for t in sorted(load_study(root, study).trials, key=lambda t: t.number):
        seeds = {s: {k: (v.removeprefix(runs) if isinstance(v, str) else v) for k, v in r.items() if k != "train_s"}
                 for s, r in t.user_attrs.get("seeds", {}).items()}
        attrs = {k: v for k, v in t.user_attrs.items()
                 if k not in ("seeds", "model_load_s", "model_load_saved_s", "population")}
        out.append({"number": t.number, "state": t.state.name, "params": t.params, "values": t.values,
                    "attrs": attrs, "seeds": seeds, "steps": sorted(t.intermediate_values)})
    return out


def _close(a: Any, b: Any, tol: float = 1e-3) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, abs_tol=tol) or (math.isnan(a) and math.isnan(b))
    return a == b


def _run_tree(folder: Path) -> dict[str, Any]:
    """Each run folder's files, config and eval rows (relative names)."""
    out = {}
    for summary in sorted(folder.rglob("summary.json")):
        run = summary.parent
        files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "wandb" not in p.parts)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["logging"].pop("runs_dir")
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader((run / "eval.csv").open())]
        out[str(run.relative_to(folder))] = {"files": files, "config": cfg, "eval": rows}
    return out


@pytest.mark.slow
def test_a_population_sweep_stores_what_one_at_a_time_stores(tmp_path, experiment):
    """2 arms x 2 seeds, real tiny training: --population 3 (a population of 3 trials, then 1)
    against --population 1: the same trials, values, user attributes, run folders and files."""
    from tiframework.cli import main

    sweep = arm_sweep(tmp_path, seeds=[0, 1])
    for k in ("1", "3"):
        assert main(["sweep", str(sweep), f"logging.runs_dir={tmp_path / f'k{k}' / 'runs'}", "--population", k]) == 0
    one, pop = _records(tmp_path / "k1", "s"), _records(tmp_path / "k3", "s")
    assert [t["state"] for t in pop] == ["COMPLETE"] * 4
    assert _close(one, pop), (one, pop)
    trials = sorted(load_study(tmp_path / "k3", "s").trials, key=lambda t: t.number)
    together = [t.user_attrs.get("population", {}).get("trials") for t in trials]
    assert together == [[0, 1, 2], [0, 1, 2], [0, 1, 2], None]
    a, b = _run_tree(tmp_path / "k1" / "runs" / "sweeps" / "s"), _run_tree(tmp_path / "k3" / "runs" / "sweeps" / "s")
    assert sorted(a) == sorted(b) == ["large/seed-0", "large/seed-1", "small/seed-0", "small/seed-1"]
    for run in a:
        assert a[run]["files"] == b[run]["files"] and a[run]["config"] == b[run]["config"]
        assert _close(a[run]["eval"], b[run]["eval"]), run
    assert main(["compare", str(tmp_path / "k3" / "runs" / "sweeps" / "s"), "--no-wandb"]) == 0


@pytest.mark.slow
def test_a_member_with_bad_input_fails_only_its_trial(tmp_path, experiment, caplog):
    """One arm's dataset does not exist: the population cannot start, its runs go one at a time,
    and only that arm's trials fail, each with the reason a lone run gives."""
    from tiframework.sweeps.launch import run_sweep

    caplog.set_level("INFO", logger="tiframework")
    arms = {"good": {VPT: 1}, "missing": {"data.path": str(tmp_path / "no-such-data")}}
    summary = run_sweep(arm_sweep(tmp_path, arms=arms, seeds=[0]), population=2, progress=False)
    assert summary["states"] == {"COMPLETE": 1, "FAIL": 1}
    failed = next(t for t in load_study(tmp_path, "s").trials if t.state.name == "FAIL")
    assert failed.params["arm"] == "missing" and "no-such-data" in failed.user_attrs["fail_reason"]
    assert "failed" in caplog.text and "run one at a time" in caplog.text
