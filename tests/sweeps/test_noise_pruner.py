"""`pruner: noise` (sweeps.pruning): a trial is stopped only when it is behind the best trial at the
same step by more than both evaluations' standard errors allow; the reason is recorded."""

from __future__ import annotations

import optuna
import pytest

from sweep_fixtures import RUNNERS, VPT, categorical, load_study, write_experiment, write_sweep
from tiframework.reports.sweep.trials import trial_rows
from tiframework.sweeps.launch import run_sweep
from tiframework.sweeps.pruning import SE_ATTR, NoisePruner


def _trial(study: optuna.Study, value: float, se: float | None, step: int = 40) -> bool:
    trial = study.ask()
    if se is not None:
        trial.set_user_attr(SE_ATTR, {str(step): se})
    trial.report(value, step)
    pruned = trial.should_prune()
    study.tell(trial, state=optuna.trial.TrialState.PRUNED) if pruned else study.tell(trial, value)
    return pruned


def test_only_a_gap_beyond_the_standard_errors_prunes():
    pruner = NoisePruner(alpha=0.01)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    assert not _trial(study, 0.50, 0.01)           # the first trial: nothing to compare with
    assert not _trial(study, 0.47, 0.01)           # 0.03 behind, z = 2.1, p 0.017: noise at alpha 0.01
    assert not _trial(study, 0.30, 0.20)           # far behind, but its own evaluation is that noisy
    assert not _trial(study, 0.30, None)           # no standard error: nothing to judge the noise by
    assert _trial(study, 0.40, 0.01)               # 0.10 behind, z = 7: stopped
    reason = pruner.reasons[4]
    assert "below trial 0's 0.5000" in reason and "one-sided z-test p" in reason
    # Minimizing: behind means above.
    low = optuna.create_study(direction="minimize", pruner=NoisePruner(maximize=False))
    assert not _trial(low, 0.30, 0.01) and _trial(low, 0.50, 0.01) and not _trial(low, 0.20, 0.01)


def test_a_sweep_with_the_noise_pruner_records_why(tmp_path):
    write_experiment(tmp_path)
    path = write_sweep(tmp_path, sampler="grid", space={VPT: categorical(3, 2, 1)}, n_trials=3, pruner="noise",
                       sampler_seed=0)
    run_sweep(path, runner=f"{RUNNERS}:NoisyRunner", progress=False, population=1)
    trials = {t.params[VPT]: t for t in load_study(tmp_path, "s").trials}
    # VPT 1 (0.30 +- 0.001) is clearly behind either other trial, so it is stopped unless it ran first.
    if trials[1].number == 0:
        assert trials[1].state.name == "COMPLETE"
    else:
        assert trials[1].state.name == "PRUNED" and "one-sided z-test" in trials[1].user_attrs["prune_reason"]
    assert trials[2].state.name == "COMPLETE"  # behind, but within its large standard error
    rows = {r["trial"]: r for r in trial_rows(load_study(tmp_path, "s"))}
    assert rows[trials[1].number]["prune_reason"] == trials[1].user_attrs.get("prune_reason", "")


def test_a_pruning_search_keeps_its_population_full(tmp_path):
    """TPE with the noise pruner, populations of 3: trials that finish or are pruned hand their place to
    the next asked trial, so 3 run at a time; without pruning the records equal one-at-a-time runs'."""
    write_experiment(tmp_path)
    space = {VPT: categorical(1, 2, 3, 4)}
    path = write_sweep(tmp_path, name="roll", space=space, n_trials=8, pruner="noise", sampler="random")
    summary = run_sweep(path, runner=f"{RUNNERS}:RollingRunner", progress=False, population=3)
    assert summary["trials"] == 8 and set(summary["states"]) <= {"COMPLETE", "PRUNED"}
    assert (tmp_path / "runs" / "sweeps" / "peak").read_text() == "3"
    study = load_study(tmp_path, "roll")
    for t in study.trials:
        if t.state.name == "PRUNED":  # only VPT 1 is ever clearly behind
            assert t.params[VPT] == 1 and "one-sided z-test" in t.user_attrs["prune_reason"]
    # No pruning possible (alpha tiny): rolling populations and one at a time record the same trials.
    records = {}
    for name, population in (("rolled", 3), ("alone", 1)):
        p = write_sweep(tmp_path, name=name, space=space, n_trials=5, pruner="noise", pruner_alpha=1e-12,
                        sampler="random", sampler_seed=1)
        run_sweep(p, runner=f"{RUNNERS}:RollingRunner", progress=False, population=population)
        records[name] = sorted((t.params[VPT], t.state.name, t.value, t.user_attrs["seeds"]["0"]["best_fidelity"])
                               for t in load_study(tmp_path, name).trials)
    assert records["rolled"] == records["alone"]


@pytest.mark.slow
def test_real_training_rolls_trials_into_a_running_population(tmp_path, caplog):
    """The tiny preset, 3 trials in a rolling population of 2: the third joins the running population
    when one leaves (`PopulationModule.join`), and every trial completes with a value. (That a rolled
    trial's records equal its one-at-a-time twin's is tested with the cheap runner above; a member that
    joins trains as if alone: tests/training/population/test_population.py.)"""
    caplog.set_level("INFO", logger="tiframework")
    write_experiment(tmp_path)
    p = write_sweep(tmp_path, name="rolled", space={VPT: categorical(1, 2, 3)}, sampler="grid", n_trials=3,
                    pruner="noise", pruner_alpha=1e-12)
    assert run_sweep(p, progress=False, population=2)["states"] == {"COMPLETE": 3}
    assert "joins the population in trial" in caplog.text
    assert all(t.value > -1 for t in load_study(tmp_path, "rolled").trials)
