"""Plateau detection on metric curves (score vs training step).

The guide's footnote "LR plateaus near 5k steps" is a claim about these curves: after
some step, more training stops buying fidelity. `find_plateau` names that step so a
sweep can stop a run early and a report can compare where runs flatten.

All functions take `steps` (strictly increasing, any spacing: runs are scored at
`eval.every`, resumed runs can leave gaps) and `scores` of the same length.
Non-finite scores (a failed evaluation) are treated as missing points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _checked(steps: Sequence[float], scores: Sequence[float]) -> tuple[list[float], list[float]]:
    """Validate the pair and drop non-finite scores."""
    if len(steps) != len(scores):
        raise ValueError(f"steps and scores differ in length ({len(steps)} vs {len(scores)})")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError("steps must be strictly increasing")
    kept = [(float(s), float(v)) for s, v in zip(steps, scores, strict=True) if math.isfinite(v)]
    return [s for s, _ in kept], [v for _, v in kept]


def smooth(values: Sequence[float], steps: Sequence[float] | None = None, width: float = 3.0) -> list[float]:
    """Centered running mean: each point becomes the mean of the points within `width / 2`
    steps of it (by step, so uneven spacing is handled; `steps=None` means 0, 1, 2, ...).

    Centered rather than an EMA on purpose: an EMA lags, which would move the plateau
    after the knee and the best checkpoint after the real peak of an overfitting run.
    Near the ends the window is one-sided. Non-finite values are ignored in the means
    (a point whose whole window is non-finite stays NaN).
    """
    steps = list(range(len(values))) if steps is None else steps
    if len(steps) != len(values):
        raise ValueError(f"steps and values differ in length ({len(steps)} vs {len(values)})")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    half = width / 2
    out = []
    for s in steps:
        near = [v for t, v in zip(steps, values, strict=True) if abs(t - s) <= half and math.isfinite(v)]
        out.append(sum(near) / len(near) if near else math.nan)
    return out


def find_plateau(
    steps: Sequence[float], scores: Sequence[float], window: float, epsilon: float
) -> float | None:
    """The first step from which the curve stops improving by `epsilon` per `window` steps.

    Exactly: the first point (s_i, y_i) such that
      1. every later point (s_j, y_j) satisfies  y_j - y_i < epsilon * max(1, (s_j - s_i) / window),
         i.e. the curve never again climbs `epsilon` above y_i within one window, nor at a
         rate of `epsilon` per window over longer spans; and
      2. at least one full `window` of steps was observed after s_i (s_last - s_i >= window),
         so a curve that only just bent over is not called flat yet.
    Returns None when no point qualifies (still rising, or too few points).

    Falls after s_i never disqualify it: for an overfitting run the plateau is at or
    before the peak, never after. Pass smoothed scores (`smooth(scores, steps, window)`)
    for noisy curves: a single noise spike later on counts as a rise.
    """
    if window <= 0:
        raise ValueError(f"window must be > 0, got {window}")
    xs, ys = _checked(steps, scores)
    for i, (si, yi) in enumerate(zip(xs, ys, strict=True)):
        if xs[-1] - si < window:
            return None  # later points all lack a full window of evidence too
        later = zip(xs[i + 1 :], ys[i + 1 :], strict=True)
        if all(yj - yi < epsilon * max(1.0, (sj - si) / window) for sj, yj in later):
            return _as_given(si)
    return None


def best(steps: Sequence[float], scores: Sequence[float]) -> tuple[float, float]:
    """(step, score) of the highest score; ties go to the earliest (cheaper) step.

    Pass smoothed scores to avoid crowning a lucky noise spike. Raises ValueError when
    there is no finite score at all.
    """
    xs, ys = _checked(steps, scores)
    if not xs:
        raise ValueError("best() needs at least one finite score")
    i = max(range(len(ys)), key=lambda k: (ys[k], -k))
    return _as_given(xs[i]), ys[i]


def _as_given(step: float) -> float:
    # Steps are usually ints; hand them back as ints so callers can index checkpoints.
    return int(step) if float(step).is_integer() else step
