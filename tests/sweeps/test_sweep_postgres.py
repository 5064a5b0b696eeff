"""Sweeps on PostgreSQL (Optuna's RDB storage): what several machines share.

Needs a server at $TIFRAMEWORK_TEST_POSTGRES_URL; `eval "$(.ci/postgres.sh)"` installs and
starts one. Outside CI these tests skip when the variable is unset or the server is
unreachable (the skip says which); with $CI set they fail instead, so CI cannot pass
without really running them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import uuid

import pytest

from sweep_fixtures import (
    FAKE,
    RUNNERS,
    VPT,
    categorical,
    check_retried,
    kill_mid_trial,
    write_experiment,
    write_sweep,
)

pytestmark = pytest.mark.postgres
URL_VAR = "TIFRAMEWORK_TEST_POSTGRES_URL"


def rdb(url: str) -> str:
    """The URL as the sweep code opens it (psycopg2 spelled out when psycopg 3 is absent)."""
    from tiframework.sweeps.storage import with_postgres_driver

    return with_postgres_driver(url)


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI must run the PostgreSQL sweep tests (see .ci/postgres.sh)")
    pytest.skip(why)


@pytest.fixture
def experiment(tmp_path):
    return write_experiment(tmp_path)


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get(URL_VAR)
    if not url:
        _unavailable(f"{URL_VAR} is not set (start a server with: eval \"$(.ci/postgres.sh)\")")
    import sqlalchemy

    shown = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
    try:
        engine = sqlalchemy.create_engine(rdb(url), poolclass=sqlalchemy.pool.NullPool,
                                          connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as exc:
        _unavailable(f"PostgreSQL at {shown} ({URL_VAR}) is unreachable: {str(exc).strip().splitlines()[0]}")
    return url


@pytest.fixture
def study_name(postgres_url: str):
    """A fresh study per test, deleted afterwards: the database is shared with other runs."""
    import optuna

    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=rdb(postgres_url))
    except KeyError:
        pass


@pytest.mark.slow
def test_two_workers_share_one_postgres_study(tmp_path, experiment, postgres_url, study_name, monkeypatch):
    """Two spawned workers (as two machines would) on one study: each grid point exactly once."""
    import optuna

    from tiframework.reports.sweep.report import write_report
    from tiframework.sweeps.launch import run_sweep

    monkeypatch.setenv("TIF_TEST_BARRIER", str(tmp_path / "barrier"))
    (tmp_path / "barrier").mkdir()
    sweep = write_sweep(tmp_path, sampler="grid", n_trials=None, space={VPT: categorical(1, 2, 3, 4, 5, 6, 7)})
    summary = run_sweep(sweep, storage=postgres_url, study_name=study_name, workers=2,
                        runner=f"{RUNNERS}:TwoWorkerRunner", progress=False)
    assert summary["states"] == {"COMPLETE": 7} and "***" in summary["storage"]
    trials = optuna.load_study(study_name=study_name, storage=rdb(postgres_url)).get_trials()
    assert sorted(t.number for t in trials) == list(range(7))
    assert sorted(t.params[VPT] for t in trials) == [1, 2, 3, 4, 5, 6, 7]
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}
    # A machine that joins late finds the study complete and adds nothing.
    again = run_sweep(sweep, storage=postgres_url, study_name=study_name, runner=FAKE, progress=False)
    assert again["trials"] == 7
    out = write_report(postgres_url, study_name=study_name, out_dir=tmp_path / "report")
    assert (out / "trials.csv").read_text().count("\n") == 8  # header + 7 trials


@pytest.mark.slow
def test_a_killed_worker_trial_is_retried_on_postgres(tmp_path, experiment, postgres_url, study_name):
    """RDB heartbeats: after the grace period, the next worker fails the dead trial and re-runs it."""
    import optuna

    from tiframework.sweeps.launch import prepare
    from tiframework.sweeps.worker import run_worker

    sweep = write_sweep(tmp_path, n_trials=2, heartbeat_interval=1, grace_period=3)
    prepared = prepare(sweep, storage=postgres_url, study_name=study_name, runner=f"{RUNNERS}:SleepyRunner",
                       progress=False)
    kill_mid_trial(prepared, tmp_path / "runs" / "sweeps" / "sleeping")
    run_worker(dataclasses.replace(prepared.spec, runner=FAKE))
    check_retried(optuna.load_study(study_name=study_name, storage=rdb(postgres_url)), 2)


def test_a_different_sweep_under_the_same_postgres_study_name_is_an_error(tmp_path, experiment, postgres_url,
                                                                          study_name):
    from tiframework.errors import UserError
    from tiframework.sweeps.launch import prepare

    prepare(write_sweep(tmp_path), storage=postgres_url, study_name=study_name, progress=False)
    other = write_sweep(tmp_path, space={VPT: categorical(4, 8)})
    with pytest.raises(UserError, match="already exists with a different space"):
        prepare(other, storage=postgres_url, study_name=study_name, progress=False)


def test_fresh_moves_a_postgres_study_aside_under_a_new_name(tmp_path, experiment, postgres_url, study_name):
    import optuna

    from tiframework.sweeps.launch import run_sweep

    run_sweep(write_sweep(tmp_path, n_trials=1), storage=postgres_url, study_name=study_name, runner=FAKE,
              progress=False)
    other = write_sweep(tmp_path, n_trials=2, space={VPT: categorical(4, 8)})
    summary = run_sweep(other, storage=postgres_url, study_name=study_name, runner=FAKE, progress=False, fresh=True)
    assert summary["states"] == {"COMPLETE": 2}
    storage = rdb(postgres_url)
    [aside] = [n for n in optuna.study.get_all_study_names(storage) if n.startswith(f"{study_name}-old-")]
    try:
        old = optuna.load_study(study_name=aside, storage=storage)
        assert [t.params[VPT] for t in old.trials] in ([1], [2], [3]) and old.trials[0].state.name == "COMPLETE"
    finally:
        optuna.delete_study(study_name=aside, storage=storage)


@pytest.mark.slow
def test_two_workers_run_every_arm_and_seed_once_on_postgres(tmp_path, experiment, postgres_url, study_name,
                                                             monkeypatch):
    """A comparison sweep (arms x seeds) shared by two workers through PostgreSQL."""
    import optuna
    import yaml

    from tiframework.sweeps.launch import run_sweep

    monkeypatch.setenv("TIF_TEST_BARRIER", str(tmp_path / "barrier"))
    (tmp_path / "barrier").mkdir()
    sweep = tmp_path / "sweeps" / "arms.yaml"
    sweep.parent.mkdir(parents=True, exist_ok=True)
    sweep.write_text(yaml.safe_dump({"experiment": "../experiments/base.yaml", "seeds": [0, 1, 2],
                                     "arms": {"one": {VPT: 1}, "two": {VPT: 2}, "four": {VPT: 4}}}))
    summary = run_sweep(sweep, storage=postgres_url, study_name=study_name, workers=2,
                        runner=f"{RUNNERS}:TwoWorkerRunner", progress=False)
    assert summary["states"] == {"COMPLETE": 9}
    trials = optuna.load_study(study_name=study_name, storage=rdb(postgres_url)).get_trials()
    assert sorted((t.params["arm"], t.params["seed"]) for t in trials) == sorted(
        (arm, seed) for arm in ("one", "two", "four") for seed in (0, 1, 2))
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}
    for t in trials:
        assert (tmp_path / "runs" / "sweeps" / study_name / t.params["arm"] / f"seed-{t.params['seed']}").is_dir()


def test_compare_reads_a_comparison_from_postgres(tmp_path, experiment, postgres_url, study_name):
    import yaml

    from tiframework.reports.compare.report import compare
    from tiframework.sweeps.launch import run_sweep

    sweep = tmp_path / "sweeps" / "arms.yaml"
    sweep.parent.mkdir(parents=True, exist_ok=True)
    sweep.write_text(yaml.safe_dump({"experiment": "../experiments/base.yaml", "seeds": [0, 1],
                                     "arms": {"one": {VPT: 1}, "four": {VPT: 4}}}, sort_keys=False))
    run_sweep(sweep, storage=postgres_url, study_name=study_name, runner="run_folders:FolderRunner", progress=False)
    done = compare([postgres_url], study_name=study_name, out_dir=tmp_path / "cmp", wandb=False)
    assert [(a["name"], a["n"]) for a in done.result["arms"]] == [("one", 2), ("four", 2)]
    assert done.result["group"] == study_name and (tmp_path / "cmp" / "report.html").is_file()


def test_a_population_sweep_on_postgres(tmp_path, experiment, postgres_url, study_name):
    """TPE asked for 2 trials at a time on PostgreSQL: every trial told, the budget exact, then resumed."""
    import optuna

    from tiframework.sweeps.launch import run_sweep

    runner = "test_sweep_population:FakePopulationRunner"
    space = {VPT: categorical(1, 2, 3, 4), "training.learning_rate": {"type": "float", "low": 0.001, "high": 0.1}}
    sweep = write_sweep(tmp_path, n_trials=3, space=space)
    summary = run_sweep(sweep, storage=postgres_url, study_name=study_name, population=2, runner=runner,
                        progress=False)
    assert summary["states"] == {"COMPLETE": 3}
    again = run_sweep(sweep, storage=postgres_url, study_name=study_name, n_trials=5, population=2, runner=runner,
                      progress=False)
    assert again["states"] == {"COMPLETE": 5}
    trials = sorted(optuna.load_study(study_name=study_name, storage=rdb(postgres_url)).trials,
                    key=lambda t: t.number)
    together = [t.user_attrs.get("population", {}).get("trials") for t in trials]
    assert together == [[0, 1], [0, 1], None, [3, 4], [3, 4]]  # trial 2 alone, the rest in pairs
