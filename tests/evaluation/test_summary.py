"""Standard errors, the unbiased best checkpoint and a run's summary, on hand-made eval rows."""

import json
import math

import pytest

from tiframework.config import EvalConfig
from tiframework.evaluation.noise import mean_se, pooled_se, se_from_sums, se_key
from tiframework.evaluation.summary import (
    BEST,
    CHOSEN_ON_HELD_OUT,
    SELECT,
    append_row,
    best_row,
    curve_plateau,
    samples_by_step,
    summarize,
)

F = "eval/clip_fidelity"


def test_mean_se_is_the_standard_error_of_the_mean():
    mean, se = mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)  # sample std / sqrt(n)
    assert math.isnan(mean_se([0.7])[1])
    assert se_from_sums(10.0, 30.0, 4) == pytest.approx(se)
    assert se_from_sums(3.0, 3.0 - 1e-15, 3) == 0.0  # cancellation never gives a negative variance
    with pytest.raises(ValueError):
        mean_se([])


def test_pooled_se_and_se_key():
    assert pooled_se([0.03, 0.04]) == pytest.approx(math.sqrt((0.0009 + 0.0016) / 2))
    assert pooled_se([math.nan, 0.02, None]) == pytest.approx(0.02)
    assert math.isnan(pooled_se([math.nan]))
    assert se_key(F) == "eval/clip_fidelity_se"


def rows_of(held_out, selection=None, se=0.01):
    rows = []
    for k, y in enumerate(held_out):
        row = {"step": 40 * k, F: y, se_key(F): se}
        if selection is not None:
            row[SELECT] = selection[k]
        append_row(rows, row)
    return rows


def test_best_is_chosen_on_the_selection_seeds_and_reported_held_out():
    # held-out peaks at step 80 by luck; the selection set says step 120 is the better checkpoint
    rows = rows_of([0.1, 0.3, 0.42, 0.38, 0.37], selection=[0.12, 0.31, 0.35, 0.40, 0.36])
    assert best_row(rows)["step"] == 120
    assert [r[BEST] for r in rows] == [0.1, 0.3, 0.42, 0.38, 0.38]  # held-out fidelity of the best so far
    s = summarize(rows, EvalConfig())
    assert (s["best_step"], s["best_score"], s["best_score_selection"]) == (120, 0.38, 0.40)
    assert (s["baseline_score"], s["final_score"]) == (0.1, 0.37)
    assert s["best_score"] < max(r[F] for r in rows)


def test_rows_without_a_selection_column_fall_back_and_say_so():
    rows = rows_of([0.1, 0.3, 0.2])
    s = summarize(rows, EvalConfig())
    assert (s["best_step"], s["best_score"], s["best_score_selection"]) == (40, 0.3, None)
    assert s["best_chosen_on"] == CHOSEN_ON_HELD_OUT
    assert rows[-1][BEST] == 0.3


def test_summary_plateau_fields_and_json_safety():
    rows = rows_of([0.1, 0.3, 0.31, 0.30, 0.30], selection=[0.1, 0.3, 0.3, 0.3, 0.3], se=0.02)
    s = summarize(rows, EvalConfig())
    assert (s["plateau_step"], s["plateau_reason"]) == (40, "plateau")
    assert s["plateau_noise"] == pytest.approx(0.02 * math.sqrt(2)) and s["plateau_paired"] is False
    no_se = summarize(rows_of([0.1, 0.3, 0.3, 0.3], se=math.nan), EvalConfig())
    assert no_se["plateau_noise"] is None
    json.dumps(no_se, allow_nan=False)
    empty = summarize([{"step": 0}], EvalConfig())
    assert empty["best_step"] is None and empty["plateau_reason"] is None


def test_per_image_samples_make_the_plateau_paired():
    rows = rows_of([0.2, 0.3, 0.33, 0.36], se=0.03)
    cfg = EvalConfig(plateau_patience=1)
    assert curve_plateau(rows, cfg).step == 40  # +0.03 per evaluation is inside independent noise
    records = [{"step": r["step"], "prompt": "[name]", "seed": i, F: r[F] + off}
               for r in rows for i, off in enumerate((-0.1, -0.05, 0.0, 0.05, 0.1))]
    samples = samples_by_step(records)
    assert samples[40] == pytest.approx([0.2, 0.25, 0.3, 0.35, 0.4])
    # every image gains exactly 0.03 per evaluation: paired, that is no noise at all
    paired = curve_plateau(rows, cfg, samples=samples)
    assert paired.paired and paired.reason == "still_rising"
    uneven = dict(samples)
    uneven[80] = uneven[80][:3]
    assert not curve_plateau(rows, cfg, samples=uneven).paired


def test_plateau_settings_come_from_the_config():
    rows = rows_of([0.1, 0.3, 0.3, 0.3], se=0.001)
    assert curve_plateau(rows, EvalConfig()).step == 40
    assert curve_plateau(rows, EvalConfig(plateau_patience=3)).reason == "still_rising"


def test_run_curve_reads_a_run_folder_with_or_without_per_image_scores(tmp_path):
    from tiframework.evaluation.plateau import arm_plateau
    from tiframework.evaluation.summary import run_curve
    from tiframework.tracking.runfolder import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    rows = rows_of([0.1, 0.3, 0.32], se=0.02)
    folder.write_eval(rows)
    old = run_curve(folder)  # a folder from before eval_per_image.csv
    assert (old.steps, old.scores, old.ses, old.samples) == ([0, 40, 80], [0.1, 0.3, 0.32], [0.02] * 3, None)
    folder.write_per_image([{"step": r["step"], "prompt": "[name]", "seed": i, F: r[F] + off}
                            for r in rows for i, off in enumerate((-0.01, 0.01))])
    new = run_curve(folder)
    assert new.samples == [pytest.approx([r[F] - 0.01, r[F] + 0.01]) for r in rows]
    assert arm_plateau([old, new], resamples=20).runs == 2
