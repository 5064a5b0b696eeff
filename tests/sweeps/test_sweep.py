"""Optuna sweeps: the sweep-file schema, real training trials on the tiny preset, pruning,
failed and killed trials, several worker processes on one journal file, and the report.

Worker/storage tests use the cheap runners of tests/helpers/sweep_fixtures.py.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import yaml

from sweep_fixtures import (
    FAKE,
    RUNNERS,
    VPT,
    categorical,
    check_retried,
    kill_mid_trial,
    load_study,
    states,
    write_experiment,
    write_sweep,
)
from tiframework.errors import UserError

REPO = Path(__file__).resolve().parents[2]


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    return write_experiment(tmp_path)


# --- the sweep file ---------------------------------------------------------------------------


@pytest.mark.parametrize("fields, message", [
    ({"space": {"embedding.vpt": categorical(1)}}, r"space\.embedding\.vpt: not a config key"),
    ({"space": {VPT: categorical()}}, r"space\.embedding\.vectors_per_token: choices is empty"),
    ({"space": {"training.accumulate": {"type": "int", "low": 5, "high": 5}}},
     r"space\.training\.accumulate: empty range: low \(5\) must be below high \(5\)"),
    ({"space": {"training.learning_rate": {"type": "float", "low": 0.1, "high": 0.01, "log": True}}}, "empty range"),
    ({"space": {VPT: categorical(2, 100)}}, r"space\.embedding\.vectors_per_token: value 100 is rejected"),
    ({"space": {"model.preset": categorical("tiny")}}, r"cannot vary model\.preset"),
    ({"space": {VPT: {"type": "choice", "choices": [1]}}}, r"space\.embedding\.vectors_per_token"),
    ({"space": {VPT: {"type": "categorical", "choices": [1], "step": 2}}}, r"step: unknown key"),
    ({"sampler": "grid", "space": {"training.accumulate": {"type": "int", "low": 1, "high": 4}}},
     r"grid needs categorical choices; training\.accumulate"),
    ({"objective": "fidelity_flexibility", "pruner": "median"}, "pruning needs a single objective"),
    ({"direction": ["maximize", "minimize"]}, "direction lists 2 values"),
    ({"n_trails": 3}, "n_trails: unknown key"),
    ({"study_name": "a/b"}, "study name may use"),
    ({"overrides": {"eval.every": 0}}, r"eval\.every is 0"),
    ({"experiment": "../experiments/nope.yaml"}, "config file not found"),
])
def test_bad_sweep_files_are_one_clear_error(tmp_path, experiment, fields, message):
    from tiframework.sweeps.schema import load_sweep

    with pytest.raises(UserError, match=message):
        load_sweep(write_sweep(tmp_path, **fields))


def test_every_space_problem_is_listed_at_once(tmp_path, experiment):
    from tiframework.sweeps.schema import load_sweep

    bad = {"embedding.vpt": categorical(1), "training.accumulate": categorical(0, 2), "training.lr": categorical(1)}
    with pytest.raises(UserError) as err:
        load_sweep(write_sweep(tmp_path, space=bad))
    text = str(err.value)
    assert "space.embedding.vpt" in text and "space.training.lr" in text
    assert "space.training.accumulate: value 0 is rejected" in text


def test_a_good_sweep_file_loads(tmp_path, experiment):
    from tiframework.sweeps.schema import load_sweep

    sweep = load_sweep(write_sweep(tmp_path, sampler="grid", n_trials=None, seeds=[0, 1, 2],
                                   space={VPT: categorical(2, 16), "training.learning_rate": categorical("0.005", "0.05:2, 0.01")}))
    assert sweep.total_trials() == 4 and sweep.total_trials(10) == 4  # a grid is never repeated
    assert sweep.directions == ["maximize"] and sweep.default_study_name() == "s"


def test_sweeps_can_turn_on_stop_on_plateau(tmp_path, experiment):
    from tiframework.sweeps.schema import load_sweep

    on = load_sweep(write_sweep(tmp_path, overrides={"training.stop_on_plateau": True}))
    assert on.base.training.stop_on_plateau
    both = load_sweep(write_sweep(tmp_path, name="both", space={"training.stop_on_plateau": categorical(True, False)}))
    assert both.space["training.stop_on_plateau"].choices == [True, False]


def test_seed_result_uses_held_out_scores():
    from tiframework.evaluation.columns import FIDELITY, FLEXIBILITY
    from tiframework.sweeps.outcome import seed_result

    rows = [{"step": 0, FIDELITY: 0.1, FLEXIBILITY: 0.3, "select/clip_fidelity": 0.12},
            {"step": 40, FIDELITY: 0.3, FLEXIBILITY: 0.25, "select/clip_fidelity": 0.45},
            {"step": 80, FIDELITY: 0.35, FLEXIBILITY: 0.2, "select/clip_fidelity": 0.40}]
    summary = {"best_step": 40, "best_score": 0.3, "best_score_selection": 0.45, "plateau_step": 40,
               "plateau_reason": "plateau", "final_step": 120, "stopped_on_plateau": {"steps_saved": 40}}
    got = seed_result(summary, rows)
    assert (got["best_fidelity"], got["plateau_fidelity"], got["flexibility"]) == (0.3, 0.3, 0.25)
    assert (got["best_fidelity_selection"], got["plateau_reason"], got["steps_saved"]) == (0.45, "plateau", 40)
    no_plateau = seed_result(summary | {"plateau_step": None, "plateau_reason": "still_rising"}, rows)
    assert no_plateau["plateau_fidelity"] == 0.35  # the last evaluation, held out


# --- storage and study errors, before any trial -----------------------------------------------


def test_unreachable_storage_is_one_clear_error_before_any_trial(tmp_path, experiment):
    from tiframework.sweeps.launch import run_sweep

    sweep = write_sweep(tmp_path)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"cannot open the study storage .*server is running") as err:
        run_sweep(sweep, storage="postgresql://tif:secret@127.0.0.1:1/tif", runner=FAKE, progress=False)
    assert time.monotonic() - start < 20
    assert "secret" not in str(err.value)  # the password is never printed
    with pytest.raises(UserError, match="cannot create the sweep journal"):
        run_sweep(sweep, storage="/proc/no/such/journal.log", runner=FAKE, progress=False)
    assert not (tmp_path / "runs" / "sweeps").exists()


def test_a_study_name_reused_with_another_sweep_is_an_error(tmp_path, experiment):
    from tiframework.sweeps.launch import run_sweep

    assert run_sweep(write_sweep(tmp_path, n_trials=1), runner=FAKE, progress=False)["trials"] == 1
    other = write_sweep(tmp_path, space={VPT: categorical(4, 8)})
    with pytest.raises(UserError, match=r"study 's' in .*journal\.log already exists with a different space"):
        run_sweep(other, runner=FAKE, progress=False)
    # The base experiment counts too: a shrunken CI run must not join a real study.
    with pytest.raises(UserError, match=r"base experiment \(training\.max_steps: 4 -> 6\)"):
        run_sweep(write_sweep(tmp_path), ["training.max_steps=6"], runner=FAKE, progress=False)
    # The same sweep resumes: n_trials counts the trials already in the study.
    assert run_sweep(write_sweep(tmp_path, n_trials=3), runner=FAKE, progress=False)["trials"] == 3


# --- trials: real training, pruning, failures -------------------------------------------------


def test_sweep_cli_end_to_end_with_real_training(tmp_path, experiment, capsys):
    """Two VPTs x two seeds on the tiny preset; trials are ordinary runs; then the report."""
    from tiframework.cli import main

    sweep = write_sweep(tmp_path, sampler="grid", n_trials=None, seeds=[0, 1], space={VPT: categorical(1, 2)})
    assert main(["sweep", str(sweep), "training.max_steps=4"]) == 0
    assert '"COMPLETE": 2' in capsys.readouterr().out
    study = load_study(tmp_path, "s")
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert states(study) == ["COMPLETE", "COMPLETE"] and sorted(t.params[VPT] for t in trials) == [1, 2]
    for t in trials:
        seeds = t.user_attrs["seeds"]
        assert set(seeds) == {"0", "1"}
        assert t.value == pytest.approx((seeds["0"]["best_fidelity"] + seeds["1"]["best_fidelity"]) / 2)
        assert set(t.intermediate_values) == {2, 4}  # reported by optimizer step, not the step-0 baseline
        for seed in (0, 1):
            run = tmp_path / "runs" / "sweeps" / "s" / f"trial-{t.number}-seed-{seed}"
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            assert (run / "summary.json").is_file() and (run / "eval.csv").is_file()
            assert cfg["training"]["seed"] == seed and cfg["embedding"]["vectors_per_token"] == t.params[VPT]
            log = cfg["logging"]
            assert (log["wandb_group"], log["wandb_job_type"]) == ("s", "sweep")
            assert {f"vectors_per_token={t.params[VPT]}", f"trial={t.number}", f"seed={seed}"} <= set(log["wandb_tags"])
    # One model load per worker: every run after the first reused it.
    assert [t.user_attrs["model_load_saved_s"] > 0 for t in trials] == [True, True]
    assert trials[1].user_attrs["model_load_saved_s"] == pytest.approx(2 * trials[1].user_attrs["model_load_s"], abs=0.01)

    assert main(["sweep-report", str(tmp_path / "runs" / "sweeps" / "s")]) == 0
    report = tmp_path / "runs" / "sweeps" / "s" / "report"
    assert {"trials.csv", "trials.md", "history.png", "fidelity_vs_vpt.png"} <= {p.name for p in report.iterdir()}
    rows = list(csv.DictReader((report / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"] and rows[0]["seeds"] == "2"
    assert "plateau step vs learning rate: skipped" in (report / "trials.md").read_text()


class PruneAtFirstReport:
    def __new__(cls):
        import optuna

        class _Prune(optuna.pruners.BasePruner):
            def prune(self, study, trial) -> bool:
                return True

        return _Prune()


def test_pruning_stops_a_trial_early_and_its_wandb_run_is_grouped(tmp_path, experiment, monkeypatch):
    from tiframework.sweeps.launch import run_sweep
    from wandb_reader import read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    summary = run_sweep(write_sweep(tmp_path, n_trials=1), ["training.max_steps=6", "logging.wandb=true"],
                        pruner=PruneAtFirstReport(), progress=False)
    assert summary["states"] == {"PRUNED": 1}
    trial = load_study(tmp_path, "s").trials[0]
    assert trial.user_attrs["pruned_at_step"] == 2 and list(trial.intermediate_values) == [2]
    run = tmp_path / "runs" / "sweeps" / "s" / "trial-0"
    steps = [int(r["step"]) for r in csv.DictReader((run / "metrics.csv").open())]
    assert max(steps) == 2 < 6  # training really stopped at the first report
    wandb_run = read_run(run)["run"]
    assert (wandb_run.run_group, wandb_run.job_type) == ("s", "sweep")
    assert {"sweep=s", "trial=0", f"vectors_per_token={trial.params[VPT]}"} <= set(wandb_run.tags)


def test_pruners_and_parallel_sampler_seeds():
    from tiframework.config import load_config
    from tiframework.sweeps.schema import SweepConfig
    from tiframework.sweeps.storage import StudyLocation
    from tiframework.sweeps.worker import WorkerSpec, make_pruner, worker_seed

    base = load_config(None, ["eval.every=50", "training.max_steps=300"])
    space = {VPT: categorical(1, 2), "training.max_steps": {"type": "int", "low": 100, "high": 900}}
    kinds = {name: type(make_pruner(SweepConfig(experiment="x", space=space, pruner=name), base)).__name__
             for name in ("none", "median", "hyperband")}
    assert kinds == {"none": "NopPruner", "median": "MedianPruner", "hyperband": "HyperbandPruner"}
    sweep = SweepConfig(experiment="x", space=space, sampler_seed=7)
    journal, db = StudyLocation(journal=Path("j.log")), StudyLocation(url="postgresql://h/db")
    alone = WorkerSpec("s.yaml", (), None, "s", 3)
    assert worker_seed(sweep, alone, journal) == 7  # one worker: reproducible
    seeds = {worker_seed(sweep, WorkerSpec("s.yaml", (), None, "s", 3, worker=i, workers=2), journal) for i in (0, 1)}
    assert len(seeds) == 2 and worker_seed(sweep, alone, db) != 7  # parallel workers never share a stream
    grid = SweepConfig(experiment="x", space={VPT: categorical(1, 2)}, sampler="grid", sampler_seed=7)
    assert worker_seed(grid, WorkerSpec("s.yaml", (), None, "s", 3, worker=1, workers=2), db) == 7  # one order


# --- the shipped sweeps, shrunk to the tiny preset as CI runs them ----------------------------

CI_OVERRIDES = ["model.preset=tiny", "data.max_side=32", "training.max_steps=4", "training.batch_size=1", "eval.every=2", "eval.steps=2",
                "eval.seeds=[0]", "eval.clip_model=tif-tiny-clip", "eval.clip_pretrained=null"]


def test_shipped_sweeps_load():
    from tiframework.sweeps.schema import load_sweep

    shipped = sorted((REPO / "sweeps").glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"vpt_lr_accum", "vpt2_vs_vpt16", "pruned_vs_unpruned"}
    for path in shipped:
        load_sweep(path)
        load_sweep(path, CI_OVERRIDES)


@pytest.mark.slow
@pytest.mark.parametrize("name, trials", [("vpt2_vs_vpt16", 4), ("vpt_lr_accum", 2), ("pruned_vs_unpruned", 4)])
def test_shipped_sweep_runs_on_the_tiny_preset(tmp_path, monkeypatch, name, trials):
    """The CI line from the sweep file's header, with the runs sent to a temporary folder;
    a comparison (arms x 2 seeds) is then compared."""
    from tiframework.cli import main
    from tiframework.reports.sweep.trials import open_study

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(REPO)  # the experiment's relative paths (CLIP weights) are repo-relative
    header = (REPO / "sweeps" / f"{name}.yaml").read_text()
    flat = " ".join(header.replace("\\\n#", " ").split())
    assert " ".join(CI_OVERRIDES) in flat and f"--n-trials {trials} --study-name ci-{name}" in flat
    argv = ["sweep", f"sweeps/{name}.yaml", *CI_OVERRIDES, f"logging.runs_dir={tmp_path}", "--n-trials", str(trials),
            "--study-name", f"ci-{name}"]
    confirm = "confirm:" in header
    if confirm:
        assert f"--study-name ci-{name} --confirm 1x2" in flat
        argv += ["--confirm", "1x2"]
    assert main(argv) == 0
    study = open_study(str(tmp_path / "sweeps" / f"ci-{name}"), None)[0]
    assert len(study.trials) == trials and all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert main(["sweep-report", str(tmp_path / "sweeps" / f"ci-{name}")]) == 0
    if confirm:  # the top trial and the baseline on 2 fresh seeds, and the report leads with them
        assert len(open_study(str(tmp_path / "sweeps" / f"ci-{name}-confirm"), None)[0].trials) == 4
        assert "## Confirmed answer" in (tmp_path / "sweeps" / f"ci-{name}" / "report" / "trials.md").read_text()
    if "arms:" in header:
        assert main(["compare", str(tmp_path / "sweeps" / f"ci-{name}"), "--no-wandb"]) == 0
        result = json.loads((tmp_path / "sweeps" / f"ci-{name}" / "compare" / "comparison.json").read_text())
        assert [a["n"] for a in result["arms"]] == [2, 2] and result["pairs"][0]["test"] == "paired t"


def test_failed_trials_record_their_reason_and_the_study_goes_on(tmp_path, experiment):
    from tiframework.reports.sweep.report import write_report
    from tiframework.sweeps.launch import run_sweep

    run_sweep(write_sweep(tmp_path, n_trials=3), runner=f"{RUNNERS}:FlakyRunner", progress=False)
    study = load_study(tmp_path, "s")
    assert states(study) == ["FAIL", "FAIL", "COMPLETE"]
    reasons = [t.user_attrs.get("fail_reason") for t in sorted(study.trials, key=lambda t: t.number)]
    assert reasons[0] == "RuntimeError: CUDA out of memory (simulated)"
    assert reasons[1] == "seed 0: non-finite loss at step 3" and reasons[2] is None
    rows = list(csv.DictReader((write_report(str(tmp_path / "runs" / "sweeps" / "s")) / "trials.csv").open()))
    assert [r["fail_reason"] for r in rows] == [reasons[0], reasons[1], ""]


def test_report_of_a_two_objective_sweep_over_vpt_and_lr(tmp_path, experiment):
    from tiframework.reports.sweep.report import write_report
    from tiframework.sweeps.launch import run_sweep

    space = {VPT: categorical(1, 2, 4), "training.learning_rate": {"type": "float", "low": 0.001, "high": 0.1, "log": True}}
    run_sweep(write_sweep(tmp_path, objective="fidelity_flexibility", sampler="random", n_trials=4, seeds=[0, 1],
                          space=space), runner=FAKE, progress=False)
    out = write_report(str(tmp_path / "runs" / "sweeps" / "s" / "journal.log"), out_dir=tmp_path / "rep")
    assert {p.name for p in out.iterdir()} == {"trials.csv", "trials.md", "history.png", "fidelity_vs_vpt.png",
                                               "plateau_vs_lr.png", "pareto.png", "report.html"}
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 4 and {"objective_best_fidelity", "objective_flexibility", VPT} <= set(rows[0])
    assert float(rows[0]["best_fidelity_std"]) == pytest.approx(0.0001 / 2**0.5, rel=0.01)  # seeds 0 and 1
    # The 95% t-interval over the two seeds: mean ± t(0.975, 1) x std / sqrt(2) = mean ± 12.706 x 0.00005.
    mean, low, high = (float(rows[0][f"best_fidelity{k}"]) for k in ("", "_ci_low", "_ci_high"))
    assert (mean - low, high - mean) == pytest.approx((12.706 * 0.00005, 12.706 * 0.00005), rel=1e-3)
    assert rows[0]["plateau_step_ci_low"] == ""  # FakeRunner's runs never plateau
    text = (out / "trials.md").read_text()
    assert "- best_fidelity: " in text and "- flexibility: the objective never varied" in text


# --- several workers, and workers that die ----------------------------------------------------


@pytest.mark.slow
def test_two_worker_processes_share_one_journal_exactly(tmp_path, experiment, monkeypatch):
    """Two spawned workers, one journal file: every grid point once, no trial lost or repeated."""
    from tiframework.sweeps.launch import run_sweep

    monkeypatch.setenv("TIF_TEST_BARRIER", str(tmp_path / "barrier"))
    (tmp_path / "barrier").mkdir()
    sweep = write_sweep(tmp_path, sampler="grid", n_trials=None, space={VPT: categorical(1, 2, 3, 4, 5, 6, 7)})
    summary = run_sweep(sweep, workers=2, runner=f"{RUNNERS}:TwoWorkerRunner", progress=False)
    assert summary["states"] == {"COMPLETE": 7}
    trials = load_study(tmp_path, "s").get_trials()
    assert sorted(t.number for t in trials) == list(range(7))
    assert sorted(t.params[VPT] for t in trials) == [1, 2, 3, 4, 5, 6, 7]
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}  # both really worked
    runs = sorted(p.name for p in (tmp_path / "runs" / "sweeps" / "s").glob("trial-*"))
    assert runs == [f"trial-{n}" for n in range(7)]


@pytest.mark.slow
def test_a_killed_worker_trial_is_failed_and_retried(tmp_path, experiment):
    """Heartbeats on the journal file: the next worker fails the silent trial and re-runs it."""
    import dataclasses

    from tiframework.sweeps.launch import prepare
    from tiframework.sweeps.worker import run_worker

    sweep = write_sweep(tmp_path, n_trials=2, heartbeat_interval=1, grace_period=3)
    prepared = prepare(sweep, runner=f"{RUNNERS}:SleepyRunner", progress=False)
    kill_mid_trial(prepared, tmp_path / "runs" / "sweeps" / "sleeping")
    assert states(prepared.study) == ["RUNNING"]
    run_worker(dataclasses.replace(prepared.spec, runner=FAKE))
    check_retried(load_study(tmp_path, "s"), 2)
