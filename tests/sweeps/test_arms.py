"""Comparison sweeps (`arms:`): validation, arm x seed trials in a fixed order, run folders
named `<arm>/seed-<s>`, resume and retries, and real tiny training with W&B grouping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sweep_fixtures import FAKE, RUNNERS, VPT, FakeRunner, categorical, load_study, write_sweep
from tiframework.errors import UserError

ARMS = {"small": {VPT: 1}, "large": {VPT: 3}}


def arm_sweep(root: Path, name: str = "s", **fields: Any) -> Path:
    """A comparison sweep file (fields set to None are left out)."""
    sweep = {"experiment": "../experiments/base.yaml", "arms": ARMS, "seeds": [0, 1, 2]} | fields
    path = root / "sweeps" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({k: v for k, v in sweep.items() if v is not None}, sort_keys=False))
    return path


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    from sweep_fixtures import write_experiment

    return write_experiment(tmp_path)


# --- the sweep file -------------------------------------------------------------------------


@pytest.mark.parametrize("fields, message", [
    ({"space": {VPT: categorical(1, 2)}}, "space and arms are exclusive"),
    ({"arms": {"only": {VPT: 1}}}, "at least two arms"),
    ({"seeds": None}, "arms need `seeds:`"),
    ({"seeds": [0, 0]}, "a seed is listed twice"),
    ({"pruner": "median"}, "set pruner: none"),
    ({"arms": {"a/b": {}, "report": {}}}, r"arms\.a/b: an arm name may use.*arms\.report"),
    ({"arms": None}, "give a search `space:` or comparison `arms:`"),
])
def test_bad_arm_sweeps_are_one_clear_error(tmp_path, experiment, fields, message):
    from tiframework.sweeps.schema import load_sweep

    with pytest.raises(UserError, match=message):
        load_sweep(arm_sweep(tmp_path, **fields))


def test_every_arm_problem_is_listed_at_once(tmp_path, experiment):
    from tiframework.sweeps.schema import load_sweep

    arms = {"a": {"embedding.vpt": 2, VPT: 100}, "b": {"model.preset": "tiny", "logging.wandb": True},
            "c": {"training.seed": 3}, "d": {}}
    with pytest.raises(UserError) as err:
        load_sweep(arm_sweep(tmp_path, arms=arms))
    text = str(err.value)
    for expected in ("arms.a.embedding.vpt: not a config key", "arms.a.embedding.vectors_per_token: value 100 is rejected",
                     "arms.b.model.preset: an arm cannot vary", "arms.b.logging.wandb: an arm cannot vary",
                     "arms.c.training.seed: seeds come from `seeds:`"):
        assert expected in text
    assert "arms.d" not in text  # an empty arm is the base experiment: fine


def test_arm_sweep_size_and_study_signature(tmp_path, experiment):
    from tiframework.sweeps.schema import load_sweep
    from tiframework.sweeps.storage import signature

    sweep = load_sweep(arm_sweep(tmp_path))
    assert sweep.total_trials() == 6 and sweep.total_trials(4) == 4 and sweep.total_trials(99) == 6
    assert signature(sweep, sweep.base)["arms"] == ARMS
    search = load_sweep(write_sweep(tmp_path, name="t"))
    assert "arms" not in signature(search, search.base)  # studies made before arms still resume


def test_next_pair_goes_seed_by_seed_and_skips_taken_pairs(tmp_path, experiment):
    from tiframework.sweeps.arms import arm_grid, next_pair
    from tiframework.sweeps.schema import load_sweep

    sweep = load_sweep(arm_sweep(tmp_path, seeds=[5, 7]))
    assert arm_grid(sweep) == [("small", 5), ("large", 5), ("small", 7), ("large", 7)]

    class Taken:
        def __init__(self, arm: str, seed: int) -> None:
            self.params = {"arm": arm, "seed": seed}

    assert next_pair(sweep, []) == ("small", 5)
    assert next_pair(sweep, [Taken("small", 5), Taken("small", 7)]) == ("large", 5)
    assert next_pair(sweep, [Taken(a, s) for a, s in arm_grid(sweep)]) is None


def test_set_aside_keeps_an_earlier_attempt_hidden(tmp_path):
    from tiframework.sweeps.arms import set_aside

    run = tmp_path / "small" / "seed-0"
    assert set_aside(run) is None
    for k in (1, 2):
        run.mkdir(parents=True)
        (run / "eval.csv").write_text(f"attempt {k}")
        assert set_aside(run) == tmp_path / "small" / f".seed-0.attempt-{k}"
        assert not run.exists()
    assert (tmp_path / "small" / ".seed-0.attempt-2" / "eval.csv").read_text() == "attempt 2"


# --- running arms -----------------------------------------------------------------------------


def test_arms_run_every_seed_in_order_into_arm_folders_and_resume(tmp_path, experiment):
    from tiframework.sweeps.launch import run_sweep

    sweep = arm_sweep(tmp_path)
    assert run_sweep(sweep, n_trials=4, runner=FAKE, progress=False)["states"] == {"COMPLETE": 4}
    study = load_study(tmp_path, "s")
    pairs = [(t.params["arm"], t.params["seed"]) for t in sorted(study.trials, key=lambda t: t.number)]
    assert pairs == [("small", 0), ("large", 0), ("small", 1), ("large", 1)]  # matched seeds first
    # Re-running resumes to the whole grid, never repeating a pair.
    assert run_sweep(sweep, runner=FAKE, progress=False)["states"] == {"COMPLETE": 6}
    trials = sorted(load_study(tmp_path, "s").trials, key=lambda t: t.number)
    assert sorted((t.params["arm"], t.params["seed"]) for t in trials) == sorted(
        (a, s) for a in ARMS for s in (0, 1, 2))
    for t in trials:
        arm, seed = t.params["arm"], t.params["seed"]
        assert (t.user_attrs["arm"], t.user_attrs["seed"], t.user_attrs["overrides"]) == (arm, seed, ARMS[arm])
        assert list(t.user_attrs["seeds"]) == [str(seed)]
        run = tmp_path / "runs" / "sweeps" / "s" / arm / f"seed-{seed}"
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["training"]["seed"] == seed and cfg["embedding"]["vectors_per_token"] == ARMS[arm][VPT]
        log = cfg["logging"]
        assert (log["arm"], log["wandb_group"], log["wandb_job_type"]) == (arm, "s", "ablation")
        assert {"sweep=s", f"arm={arm}", f"seed={seed}"} <= set(log["wandb_tags"])
        assert t.value == pytest.approx(0.5 + 0.01 * ARMS[arm][VPT] + 0.004 + 0.0001 * seed)  # FakeRunner's formula
    # Other arms under the same study name: an error, not a mixed study.
    with pytest.raises(UserError, match=r"already exists with a different arms"):
        run_sweep(arm_sweep(tmp_path, arms={"small": {VPT: 1}, "huge": {VPT: 4}}), runner=FAKE, progress=False)


class LargeSeedOneFails(FakeRunner):
    def run(self, cfg: Any, parts: Any, on_eval: Any) -> dict[str, Any]:
        if cfg.logging.run_id == "large/seed-1":
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().run(cfg, parts, on_eval)


def test_a_failed_arm_run_is_recorded_and_the_others_go_on(tmp_path, experiment):
    from tiframework.sweeps.launch import run_sweep

    sweep = arm_sweep(tmp_path, seeds=[0, 1])
    assert run_sweep(sweep, runner=f"{__name__}:LargeSeedOneFails", progress=False)["states"] == {
        "COMPLETE": 3, "FAIL": 1}
    failed = [t for t in load_study(tmp_path, "s").trials if t.state.name == "FAIL"]
    assert [(t.params["arm"], t.params["seed"]) for t in failed] == [("large", 1)]
    assert failed[0].user_attrs["fail_reason"] == "RuntimeError: CUDA out of memory (simulated)"
    # The failure counts: re-running does not repeat it (a new study name does).
    assert run_sweep(sweep, runner=FAKE, progress=False)["trials"] == 4


@pytest.mark.slow
def test_a_killed_arm_trial_is_retried_with_its_arm_and_seed(tmp_path, experiment):
    import dataclasses

    from sweep_fixtures import kill_mid_trial
    from tiframework.sweeps.launch import prepare
    from tiframework.sweeps.worker import run_worker

    sweep = arm_sweep(tmp_path, seeds=[0], heartbeat_interval=1, grace_period=3)
    prepared = prepare(sweep, runner=f"{RUNNERS}:SleepyRunner", progress=False)
    kill_mid_trial(prepared, tmp_path / "runs" / "sweeps" / "sleeping")
    run_worker(dataclasses.replace(prepared.spec, runner=FAKE))
    trials = sorted(load_study(tmp_path, "s").trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].params == trials[0].params == {"arm": "small", "seed": 0}
    assert sorted(t.params["arm"] for t in trials[1:]) == ["large", "small"]


# --- real training on the tiny preset: run folders, W&B groups and the step axis ----------------


@pytest.mark.slow
def test_arm_sweep_trains_and_lands_in_one_wandb_group(tmp_path, experiment, monkeypatch):
    from tiframework.sweeps.launch import run_sweep
    from wandb_reader import read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = run_sweep(arm_sweep(tmp_path, seeds=[0, 1]), ["logging.wandb=true"], progress=False)
    assert summary["states"] == {"COMPLETE": 4}
    for arm in ARMS:
        for seed in (0, 1):
            run = tmp_path / "runs" / "sweeps" / "s" / arm / f"seed-{seed}"
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            assert cfg["logging"]["arm"] == arm and cfg["training"]["seed"] == seed
            got = read_run(run)
            assert (got["run"].run_group, got["run"].job_type) == ("s", "ablation")
            assert got["run"].display_name == f"s/{arm}/seed-{seed}"
            assert (got["config"]["arm"], got["config"]["seed"]) == (arm, seed)
            # Eval metrics are plotted against the optimizer step, logged beside them.
            assert got["metrics"]["eval/clip_fidelity"] == "train/step"
            steps = [h["train/step"] for h in got["history"] if "eval/clip_fidelity" in h]
            assert steps == [0, 2, 4]
            assert {"eval/best_score", "eval/best_step", "eval/final_step"} <= set(got["summary"])
