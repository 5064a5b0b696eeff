"""The confirmation stage of a search (`confirm:`): the top configurations and the baseline on
fresh seeds as a comparison study, and sweep-report's headline read back from it (cheap runner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sweep_fixtures import FAKE, VPT, categorical, load_study, write_experiment, write_sweep
from tiframework.errors import UserError
from tiframework.reports.sweep.report import write_report
from tiframework.sweeps.confirm import parse_confirm
from tiframework.sweeps.launch import run_sweep
from tiframework.sweeps.schema import load_sweep


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory) -> Path:
    """A grid over VPT 1/2/3 (the fake runner scores higher VPT better), top 2 confirmed on 3 seeds."""
    root = tmp_path_factory.mktemp("confirm")
    write_experiment(root)
    path = write_sweep(root, sampler="grid", space={VPT: categorical(1, 2, 3)}, n_trials=3,
                       confirm={"top": 2, "seeds": 3})
    summary = run_sweep(path, runner=FAKE, progress=False, population=1)
    assert summary["confirm"]["states"] == {"COMPLETE": 9}
    return root


def test_the_top_configurations_and_the_baseline_run_on_fresh_seeds(confirmed):
    study = load_study(confirmed, "s-confirm")
    search = load_study(confirmed, "s")
    vpt = {t.number: t.params[VPT] for t in search.trials}
    arms = {(t.params["arm"], t.params["seed"]) for t in study.trials}
    top = sorted((a for a, _ in arms if a != "baseline"), key=lambda a: -vpt[int(a.removeprefix("trial-"))])
    assert [vpt[int(a.removeprefix("trial-"))] for a in dict.fromkeys(top)] == [3, 2]
    # The search ran seed 0 (the experiment's own); the confirmation seeds are new, every arm on each.
    assert {s for _, s in arms} == {1, 2, 3} and len(arms) == 9
    run = confirmed / "runs" / "sweeps" / "s-confirm" / "baseline" / "seed-1" / "config.json"
    cfg = json.loads(run.read_text())
    assert cfg["eval"]["seeds_follow_training_seed"] is True and cfg["embedding"]["vectors_per_token"] == 2


def test_sweep_report_leads_with_the_confirmed_answer(confirmed):
    out = write_report(str(confirmed / "runs" / "sweeps" / "s"))
    md = (out / "trials.md").read_text()
    assert md.index("## Confirmed answer") < md.index("| trial")
    result = json.loads((out / "confirmed.json").read_text())
    best = result["configs"][0]
    assert best["params"] == {VPT: 3} and best["confirmed"]["ci"] is not None
    # Fake scores: 0.5 + 0.01 vpt + 0.001 step + 0.0001 seed; the search ran seed 0, so the
    # winner's curse is -0.0001 x mean fresh seed (2): a measured number, here a tiny negative one.
    assert best["curse"] == pytest.approx(-0.0002)
    assert best["vs_baseline"]["diff"] == pytest.approx(0.01) and best["vs_baseline"]["n_tests"] == 2
    assert "Winner's curse" in md and "Confirmed best" in md and "Holm p" in md
    assert "Confirmed answer" in (out / "report.html").read_text()


def test_confirm_options_are_checked(tmp_path):
    write_experiment(tmp_path)
    assert parse_confirm("3x5").model_dump() == {"top": 3, "seeds": 5, "baseline": True}
    with pytest.raises(UserError, match="TOPxSEEDS"):
        parse_confirm("3x1")
    arms = {"arms": {"a": {}, "b": {VPT: 1}}, "seeds": [0, 1], "space": {}, "confirm": {"top": 1}}
    with pytest.raises(UserError, match="confirm: needs a search"):
        load_sweep(write_sweep(tmp_path, name="c", **arms))
    assert yaml.safe_load(write_sweep(tmp_path, name="d", confirm={"top": 2}).read_text())["confirm"] == {"top": 2}
