"""The sweep report counts every seed by its plateau reason; none is dropped for lacking a plateau."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tiframework.reports.sweep.plots import _plateau_points, plateau_vs_lr
from tiframework.reports.sweep.trials import LR, plateau_reasons, reasons_text, trial_rows


def seed(reason: str | None, plateau: int | None, final: int = 120) -> dict:
    out = {"best_fidelity": 0.3, "plateau_step": plateau, "final_step": final}
    if reason is not None:
        out["plateau_reason"] = reason
    return out


def study_of(*trials: dict[str, dict]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for i, seeds in enumerate(trials):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.3, params={LR: 0.01 * (i + 1)},
                                     distributions={LR: FloatDistribution(0.001, 0.1, log=True)},
                                     user_attrs={"seeds": seeds}))
    return study


def test_every_seed_is_counted_by_reason(tmp_path):
    study = study_of(
        {"0": seed("plateau", 40), "1": seed("plateau", 80), "2": seed("still_rising", None)},
        {"0": seed("no_gain", None, final=100), "1": seed(None, None), "2": seed(None, 40)},  # last two: old runs
    )
    first, second = study.get_trials()
    assert _plateau_points(first) == ([40.0, 80.0], {"still_rising": [120.0]})
    assert _plateau_points(second) == ([40.0], {"no_gain": [100.0], "unrecorded": [120.0]})
    assert reasons_text(plateau_reasons(first)) == "plateau 2, still_rising 1"
    rows = trial_rows(study)
    assert [r["plateau_reasons"] for r in rows] == ["plateau 2, still_rising 1",
                                                    "plateau 1, no_gain 1, unrecorded 1"]
    assert rows[0]["plateau_step"] == 60  # the mean over the seeds that reached a plateau
    assert plateau_vs_lr(study, tmp_path) == "plateau_vs_lr.png"
    assert (tmp_path / "plateau_vs_lr.png").stat().st_size > 0


def test_a_study_where_no_run_plateaued_still_gets_its_plot(tmp_path):
    study = study_of({"0": seed("still_rising", None)}, {"0": seed("no_gain", None)})
    assert plateau_vs_lr(study, tmp_path) == "plateau_vs_lr.png"
