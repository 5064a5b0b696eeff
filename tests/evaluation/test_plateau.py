import math
import random

import pytest

from tiframework.evaluation.plateau import best, find_plateau, smooth


def rise_then_flat(steps, knee=2000, top=0.8):
    return [top * min(s, knee) / knee for s in steps]


def test_rise_then_flat_plateau_at_the_knee():
    steps = list(range(0, 6001, 250))
    assert find_plateau(steps, rise_then_flat(steps), window=500, epsilon=0.005) == 2000


def test_uneven_spacing_and_smoothing_keep_the_knee_close():
    rng = random.Random(0)
    steps = sorted(rng.sample(range(0, 8000), 60))
    scores = [y + rng.gauss(0, 0.002) for y in rise_then_flat(steps)]
    found = find_plateau(steps, smooth(scores, steps, width=500), window=500, epsilon=0.01)
    assert found is not None and 1500 <= found <= 2300


def test_noisy_flat_curve_plateaus_at_the_start():
    rng = random.Random(1)
    steps = list(range(0, 5001, 100))
    scores = [0.6 + rng.gauss(0, 0.01) for _ in steps]
    smoothed = smooth(scores, steps, width=1000)
    assert find_plateau(steps, smoothed, window=500, epsilon=0.01) == 0


def test_still_rising_is_none():
    steps = list(range(0, 5001, 250))
    scores = [0.1 + 0.0001 * s for s in steps]  # 0.05 per 500 steps
    assert find_plateau(steps, scores, window=500, epsilon=0.005) is None


def test_slow_rise_below_epsilon_per_window_counts_as_flat():
    steps = list(range(0, 5001, 250))
    scores = [0.000004 * s for s in steps]  # 0.002 per 500 steps
    assert find_plateau(steps, scores, window=500, epsilon=0.005) == 0


def test_just_bent_over_needs_a_full_window_of_evidence():
    steps = list(range(0, 2201, 100))
    scores = rise_then_flat(steps, knee=2000)
    assert find_plateau(steps, scores, window=500, epsilon=0.005) is None


def test_overfitting_plateau_and_best_at_the_peak_not_after():
    steps = list(range(0, 6001, 250))
    scores = [0.8 - abs(s - 3000) * 0.0002 for s in steps]  # peak at 3000, then falls
    assert find_plateau(steps, scores, window=500, epsilon=0.005) == 3000
    assert best(steps, scores) == (3000, pytest.approx(0.8))
    smoothed = smooth(scores, steps, width=750)
    assert best(steps, smoothed)[0] == 3000
    assert find_plateau(steps, smoothed, window=500, epsilon=0.005) <= 3000


def test_best_ties_go_to_the_earliest_step_and_nan_is_skipped():
    assert best([0, 10, 20, 30], [0.1, 0.5, 0.5, math.nan]) == (10, 0.5)
    assert best([0, 10], [math.nan, 0.2]) == (10, 0.2)


def test_edge_cases_empty_and_one_point():
    assert find_plateau([], [], window=500, epsilon=0.01) is None
    assert find_plateau([250], [0.5], window=500, epsilon=0.01) is None
    assert smooth([]) == []
    assert smooth([0.3]) == [0.3]
    assert best([250], [0.5]) == (250, 0.5)
    with pytest.raises(ValueError, match="at least one"):
        best([], [])


def test_bad_inputs():
    with pytest.raises(ValueError, match="length"):
        find_plateau([0, 1], [0.1], window=1, epsilon=0.1)
    with pytest.raises(ValueError, match="increasing"):
        best([10, 5], [0.1, 0.2])
    with pytest.raises(ValueError, match="window"):
        find_plateau([0], [0.1], window=0, epsilon=0.1)
    with pytest.raises(ValueError, match="width"):
        smooth([1.0], width=0)


def test_smooth_is_a_centered_mean_by_step():
    assert smooth([0.0, 3.0, 6.0], width=3) == [1.5, 3.0, 4.5]
    # uneven spacing: step 100 is too far from 0 and 10 to join their mean
    assert smooth([1.0, 3.0, 9.0], steps=[0, 10, 100], width=20) == [2.0, 2.0, 9.0]
