"""How a sweep ends: exit status when nothing completed, and `--fresh` starting a study over
without deleting the old one."""

from __future__ import annotations

import pytest

from sweep_fixtures import FAKE, VPT, categorical, load_study, states, write_experiment, write_sweep
from tiframework.errors import UserError


@pytest.fixture
def experiment(tmp_path):
    return write_experiment(tmp_path)


def test_a_sweep_whose_trials_all_fail_exits_non_zero_with_reasons_counted(tmp_path, experiment, capsys):
    from tiframework.cli import main

    sweep = write_sweep(tmp_path, n_trials=2)
    # every run stops at its first step: the norm limit is below any vector's norm
    assert main(["sweep", str(sweep), "eval.max_vector_norm=0.000001"]) == 1
    err = capsys.readouterr().err  # progress bars, then one error line at the end
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    assert err.rstrip().endswith(line) and line.startswith("error: all 2 trial(s) of study s failed: 2x seed 0:")
    assert "eval.max_vector_norm" in line  # the two reasons differ only in their numbers: counted together
    assert states(load_study(tmp_path, "s")) == ["FAIL", "FAIL"]


def test_a_sweep_with_a_complete_trial_exits_zero(tmp_path, experiment):
    from tiframework.sweeps.launch import all_failed, run_sweep

    summary = run_sweep(write_sweep(tmp_path, n_trials=3), runner="sweep_fixtures:FlakyRunner", progress=False)
    assert summary["fail_reasons"] == {"RuntimeError: CUDA out of memory (simulated)": 1,
                                       "seed 0: non-finite loss at step 3": 1}
    assert all_failed(summary) is None


def test_fresh_moves_the_old_study_aside_and_starts_over(tmp_path, experiment):
    from tiframework.sweeps.launch import run_sweep

    run_sweep(write_sweep(tmp_path, n_trials=1), runner=FAKE, progress=False)
    other = write_sweep(tmp_path, n_trials=2, space={VPT: categorical(4, 8)})
    with pytest.raises(UserError, match="--fresh to move the old one aside"):
        run_sweep(other, runner=FAKE, progress=False)
    summary = run_sweep(other, runner=FAKE, progress=False, fresh=True)
    assert summary["states"] == {"COMPLETE": 2}
    sweeps = tmp_path / "runs" / "sweeps"
    [old] = [p for p in sweeps.iterdir() if p.name.startswith("s-old-")]
    assert (old / "journal.log").is_file() and (old / "trial-0").is_dir()  # the old study and its runs, whole
    from tiframework.reports.sweep.trials import open_study

    assert [t.state.name for t in open_study(str(old), "s")[0].trials] == ["COMPLETE"]
    assert sorted(t.params[VPT] for t in load_study(tmp_path, "s").trials) == [4, 8]


def test_a_val_loss_sweep_minimises_each_runs_lowest_validation_loss(tmp_path, experiment):
    import json

    import optuna

    from tiframework.sweeps.launch import run_sweep
    from tiframework.sweeps.schema import load_sweep

    sweep = write_sweep(tmp_path, objective="val_loss", n_trials=2,
                        overrides={"validation.every": 2, "validation.split": 0.3, "eval.every": 0})
    assert load_sweep(sweep).directions == ["minimize"]
    run_sweep(sweep, progress=False)
    study = load_study(tmp_path, "s")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    for trial in study.get_trials(deepcopy=False):
        assert trial.state.name == "COMPLETE"
        (seed,) = trial.user_attrs["seeds"].values()
        summary = json.loads((tmp_path / seed["run_dir"] / "summary.json").read_text())
        assert trial.value == seed["val_loss"] == summary["val_loss_best"]
        assert seed["best_fidelity"] is None  # no evaluation: the loss alone scores the trial
    with pytest.raises(UserError, match="objective val_loss needs the validation loss"):
        load_sweep(write_sweep(tmp_path, name="nov", objective="val_loss"))
    with pytest.raises(UserError, match="needs pruner: none"):
        load_sweep(write_sweep(tmp_path, name="pr", objective="val_loss", pruner="median",
                               overrides={"validation.every": 2}))
