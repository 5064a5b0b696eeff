import math

import numpy as np
import pytest

from tiframework.evaluation.plateau import Curve, arm_plateau, best, find_plateau, run_plateau, smooth

STEPS = list(range(0, 401, 40))  # 11 evaluations


def knee(steps, at=160, top=0.4, base=0.1):
    return [base + (top - base) * min(s, at) / at for s in steps]


def images(curve, n=12, spread=0.05, seed=0, common=0.9):
    """Per-image scores around `curve`: each image has its own offset (its seed) shared by
    every checkpoint (weight `common`) plus independent noise."""
    rng = np.random.default_rng(seed)
    offset = rng.normal(0, spread, n)
    return [list(y + common * offset + math.sqrt(1 - common**2) * rng.normal(0, spread, n) - common * offset.mean())
            for y in curve]


# --- the rule on exact curves -----------------------------------------------------------


def test_rise_then_flat_plateaus_at_the_knee():
    p = find_plateau(STEPS, knee(STEPS), 0.01)
    assert (p.step, p.reason, p.paired) == (160, "plateau", False)
    assert p.noise == pytest.approx(0.01 * math.sqrt(2))  # SE of a difference of two evaluations


def test_gains_within_the_noise_do_not_count():
    scores = knee(STEPS)  # +0.075 per evaluation up to step 160
    # 2 * sqrt(2) * 0.03 = 0.085: one evaluation's gain is within the noise, two are not
    assert find_plateau(STEPS, scores, 0.03).step == 120
    assert find_plateau(STEPS, scores, 0.06).step == 80
    assert find_plateau(STEPS, scores, 0.001).step == 160


def test_a_curve_that_never_beats_its_baseline_is_no_gain_not_a_plateau_at_zero():
    flat = [0.2, 0.21, 0.19, 0.2, 0.22, 0.2]
    p = find_plateau(STEPS[:6], flat, 0.02)
    assert (p.step, p.reason) == (None, "no_gain")
    falling = [0.3, 0.25, 0.2, 0.1]
    assert find_plateau(STEPS[:4], falling, 0.01).reason == "no_gain"


def test_a_curve_rising_to_its_end_is_still_rising():
    rising = [0.1 + 0.03 * k for k in range(len(STEPS))]
    p = find_plateau(STEPS, rising, 0.005)
    assert (p.step, p.reason) == (None, "still_rising")


def test_patience_needs_evaluations_after_the_plateau():
    scores = knee(STEPS[:6], at=120)  # flat only from step 120: two evaluations after it
    assert find_plateau(STEPS[:6], scores, 0.001, patience=2).step == 120
    p = find_plateau(STEPS[:6], scores, 0.001, patience=3)
    assert (p.step, p.reason) == (None, "still_rising")


def test_falls_never_disqualify_so_an_overfitting_run_plateaus_at_its_peak():
    peak = [0.1, 0.2, 0.3, 0.4, 0.35, 0.3, 0.25]
    assert find_plateau(STEPS[:7], peak, 0.005).step == 120
    assert best(STEPS[:7], peak) == (120, 0.4)


def test_a_late_real_rise_moves_the_plateau_later():
    two_steps = [0.1, 0.3, 0.3, 0.3, 0.3, 0.45, 0.45, 0.45]
    assert find_plateau(STEPS[:8], two_steps, 0.01).step == 200


def test_unknown_noise_counts_any_rise():
    scores = [0.1, 0.2, 0.2001, 0.2, 0.2]
    p = find_plateau(STEPS[:5], scores, math.nan)
    assert p.step == 80 and math.isnan(p.noise)


def test_per_point_noise_and_failed_evaluations():
    scores = [0.1, 0.3, math.nan, 0.32, 0.31, 0.3]
    ses = [0.01, 0.01, math.nan, 0.01, 0.05, 0.01]
    assert find_plateau(STEPS[:6], scores, ses).step == 40  # the NaN point is skipped


# --- paired noise -------------------------------------------------------------------------


def test_paired_samples_see_a_small_gain_that_independent_ses_miss():
    curve = [0.1, 0.2, 0.25, 0.28, 0.30, 0.31, 0.315, 0.318]  # slowing, but still rising
    samples = images(curve, common=0.98)
    se = [float(np.std(v, ddof=1) / math.sqrt(len(v))) for v in samples]
    means = [float(np.mean(v)) for v in samples]
    independent = find_plateau(STEPS[:8], means, se)
    paired = find_plateau(STEPS[:8], means, se, samples=samples)
    assert paired.paired and not independent.paired
    assert paired.noise < independent.noise / 3
    assert independent.reason == "plateau"
    assert paired.step is None or paired.step > independent.step


def test_samples_must_line_up():
    with pytest.raises(ValueError, match="same number"):
        find_plateau([0, 1], [0.1, 0.2], samples=[[0.1, 0.1], [0.2]])
    with pytest.raises(ValueError, match="rows"):
        find_plateau([0, 1], [0.1, 0.2], samples=[[0.1, 0.1]])
    # one value per evaluation cannot give a paired SE: the per-point noise is used
    assert not find_plateau([0, 1, 2, 3], [0.1, 0.2, 0.2, 0.2], 0.01, samples=[[0.1], [0.2], [0.2], [0.2]]).paired


# --- smoothing ----------------------------------------------------------------------------


def test_smoothing_is_counted_in_evaluations_and_keeps_the_ends():
    assert smooth([0.0, 3.0, 6.0, 9.0, 12.0], 3) == [0.0, 3.0, 6.0, 9.0, 12.0]  # linear: unchanged
    assert smooth([1.0, 5.0, 0.0, 5.0, 1.0], 3) == [1.0, 2.0, 10 / 3, 2.0, 1.0]
    assert smooth([1.0, math.nan, 3.0], 3) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="odd"):
        smooth([1.0], 2)


def test_smoothing_removes_a_lone_spike():
    spike = [0.1, 0.3, 0.3, 0.45, 0.3, 0.3, 0.3, 0.3]
    assert find_plateau(STEPS[:8], spike, 0.01).step == 120
    # over 3 evaluations the spike is a bump of 0.05 around step 80-160, not a rise at 120
    assert find_plateau(STEPS[:8], spike, 0.01, smoothing=3).step == 80


# --- edges --------------------------------------------------------------------------------


def test_edges_and_bad_inputs():
    assert find_plateau([], [], 0.01).reason == "no_gain"
    assert find_plateau([0], [0.5], 0.01).reason == "no_gain"
    assert find_plateau([0, 40], [0.1, 0.5], 0.01).reason == "still_rising"
    assert best([0, 10, 20, 30], [0.1, 0.5, 0.5, math.nan]) == (10, 0.5)
    with pytest.raises(ValueError, match="at least one"):
        best([], [])
    with pytest.raises(ValueError, match="length"):
        find_plateau([0, 1], [0.1], 0.01)
    with pytest.raises(ValueError, match="increasing"):
        find_plateau([10, 5], [0.1, 0.2], 0.01)
    with pytest.raises(ValueError, match="patience"):
        find_plateau([0], [0.1], 0.01, patience=0)
    with pytest.raises(ValueError, match="z"):
        find_plateau([0], [0.1], 0.01, z=0)


# --- arms -----------------------------------------------------------------------------------


def arm(n_runs, curve, seed=0, jitter=0.03):
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(n_runs):
        ys = [y + (rng.normal(0, jitter) if k else 0.0) for k, y in enumerate(curve)]
        runs.append(Curve(STEPS[: len(curve)], ys, [0.02] * len(curve)))
    return runs


def test_arm_plateau_on_the_seed_mean_with_an_interval():
    curves = arm(10, knee(STEPS))
    got = arm_plateau(curves, resamples=300)
    assert got.reason == "plateau" and got.runs == 10
    assert 120 <= got.step <= 200
    assert got.low is not None and got.low <= got.step <= got.high
    assert sum(got.run_reasons.values()) == 10
    assert sum(got.resample_reasons.values()) == pytest.approx(1.0)
    assert got.steps == STEPS and len(got.mean) == len(STEPS)
    assert got == arm_plateau(curves, resamples=300)  # deterministic for a given seed


def test_arm_of_one_run_is_that_run_and_arms_without_gain_say_so():
    (one,) = arm(1, knee(STEPS))
    got = arm_plateau([one])
    assert (got.step, got.reason) == (run_plateau(one).step, run_plateau(one).reason)
    assert got.low is None and got.high is None
    flat = arm(5, [0.2] * 8, jitter=0.01)
    assert arm_plateau(flat, resamples=100).reason == "no_gain"


def test_arm_runs_stopped_early_are_carried_forward():
    long = arm(3, knee(STEPS))
    stopped = Curve(STEPS[:7], knee(STEPS)[:7], [0.02] * 7)  # stopped on its plateau at step 240
    got = arm_plateau([*long, stopped], resamples=50)
    assert got.steps == STEPS and got.runs == 4
    assert got.reason == "plateau"
    with pytest.raises(ValueError, match="at least one"):
        arm_plateau([])
