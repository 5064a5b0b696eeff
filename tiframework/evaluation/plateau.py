"""Plateau detection on a score curve (score vs training step), judged against its noise.

The guide's footnote "LR plateaus near 5k steps" is a claim about these curves: after some
step, more training stops buying fidelity. But an eval score is a mean over a dozen images
and moves when the seeds change, so "stops improving" only means something relative to that
noise. The rule, for evaluations k = 0..n-1 (k = 0 the step-0 baseline) with scores y_k:

- **improvement**: a later evaluation j *improves on* k when y_j - y_k > z * SE(y_j - y_k)
  (z = `eval.plateau_z`, default 2);
- **no_gain**: no evaluation improves on the baseline: no plateau step (null), never "a
  plateau at step 0";
- **plateau**: the plateau step is the earliest evaluation k that no later evaluation
  improves on, provided at least `patience` evaluations follow it (`eval.plateau_patience`):
  the run's plateau is the earliest step after which no later gain exceeds the noise;
- **still_rising**: the curve gained, but no evaluation qualifies: every candidate is
  improved on later, or too few evaluations follow the last one that is not.

SE(y_j - y_k), the noise: every checkpoint is scored on the *same* eval seeds, so when the
per-image scores are known (`samples`: one row per evaluation, the images in the same
order), the difference is paired, image by image: SE = std_i(v_ji - v_ki) / sqrt(images).
Much of an image's score is its seed (pose, background), common to both checkpoints, and
the paired SE removes it; it is what decides whether checkpoint j beats checkpoint k on
the eval distribution. Without samples (run folders from before they were recorded) the
two scores are treated as independent, SE = sqrt(s_k^2 + s_j^2) from their own SEs: a
larger noise, so such curves plateau earlier. `Plateau.noise` reports the noise the rule
used: the root-mean-square SE of the difference between consecutive evaluations.

Falls never disqualify a point: for an overfitting run the plateau is at or before the peak.
With `smoothing` w > 1, scores (and samples) are first replaced by centered running means
over w *evaluations* (never steps, which can be fewer than one eval interval), shrinking
symmetrically at the ends so the last point is not dragged down.

`find_plateau` judges one run; `arm_plateau` judges an arm of runs (seeds) on its seed-mean
curve, the runs as paired samples, with a bootstrap interval over the runs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np

from tiframework.evaluation.noise import pooled_se

Reason = Literal["plateau", "still_rising", "no_gain"]
REASONS: tuple[Reason, ...] = ("plateau", "still_rising", "no_gain")


@dataclass(frozen=True)
class Plateau:
    """Where a curve stops improving beyond its noise.

    step: the plateau step (None unless reason is "plateau"); noise: the RMS standard error
    of the difference between consecutive evaluations that the rule used (NaN when unknown,
    and then any rise counts); paired: whether that SE came from per-image samples.
    """

    step: int | float | None
    reason: Reason
    noise: float
    paired: bool


def _checked(steps: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Validate the pair; the positions of finite scores (a failed evaluation is skipped)."""
    if len(steps) != len(scores):
        raise ValueError(f"steps and scores differ in length ({len(steps)} vs {len(scores)})")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError("steps must be strictly increasing")
    return [i for i, y in enumerate(scores) if math.isfinite(float(y))]


def _window(n: int, k: int, half: int) -> slice:
    h = min(half, k, n - 1 - k)  # symmetric: the ends stay unsmoothed
    return slice(k - h, k + h + 1)


def smooth(values: Sequence[float], window: int = 3) -> list[float]:
    """Centered running mean over `window` evaluations (odd), by position, not by step.

    Near the ends the window shrinks symmetrically (the first and last points stay as they
    are): a one-sided window would drag the end of a rising curve down and move the
    plateau. Non-finite values are skipped in the means.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"smoothing window must be an odd number of evaluations >= 1, got {window}")
    out = []
    for k in range(len(values)):
        near = [float(v) for v in values[_window(len(values), k, window // 2)] if math.isfinite(float(v))]
        out.append(math.fsum(near) / len(near) if near else math.nan)
    return out


class _Noise:
    """SE of y_j - y_k: paired over samples when there are (at least 2 per point), else from
    per-point SEs as independent (unknown SEs count as 0)."""

    def __init__(self, ses: list[float], samples: np.ndarray | None, window: int) -> None:
        n = len(ses)
        self.samples = None
        if samples is not None and samples.ndim == 2 and samples.shape[1] >= 2:
            self.samples = np.stack([samples[_window(n, k, window // 2)].mean(axis=0) for k in range(n)])
        # A mean of m points' scores has SE sqrt(sum s^2) / m, as if independent.
        self.ses = [math.sqrt(math.fsum(s * s for s in ses[_window(n, k, window // 2)]))
                    / len(ses[_window(n, k, window // 2)]) for k in range(n)]

    def __call__(self, k: int, j: int) -> float:
        if self.samples is not None:
            d = self.samples[j] - self.samples[k]
            return float(d.std(ddof=1) / math.sqrt(d.size))
        return math.sqrt(self.ses[k] ** 2 + self.ses[j] ** 2)


def find_plateau(steps: Sequence[float], scores: Sequence[float], noise: float | Sequence[float] = math.nan,
                 *, samples: Sequence[Sequence[float]] | None = None, z: float = 2.0, patience: int = 2,
                 smoothing: int = 1) -> Plateau:
    """The plateau of one curve by the module's rule.

    `samples`: per evaluation, the per-image scores the score is the mean of, the images in
    the same order at every evaluation (same seeds, same prompts): the noise is then paired.
    Otherwise `noise`, the SE of each evaluation's score (one number, or one per point; NaN
    = unknown, counts as 0), is used as if the evaluations were independent.
    """
    if z <= 0:
        raise ValueError(f"z must be > 0, got {z}")
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if smoothing < 1 or smoothing % 2 == 0:
        raise ValueError(f"smoothing must be an odd number of evaluations >= 1, got {smoothing}")
    kept = _checked(steps, scores)
    per_point = [noise] * len(scores) if isinstance(noise, (int, float)) else list(noise)
    if len(per_point) != len(scores):
        raise ValueError(f"noise has {len(per_point)} values for {len(scores)} scores")
    matrix = None
    if samples is not None:
        if len(samples) != len(scores):
            raise ValueError(f"samples has {len(samples)} rows for {len(scores)} scores")
        widths = {len(samples[i]) for i in kept}
        if len(widths) > 1:
            raise ValueError("samples must have the same number of values at every evaluation")
        matrix = np.asarray([samples[i] for i in kept], dtype=np.float64) if kept else None
        if matrix is not None and not np.isfinite(matrix).all():
            matrix = None  # a lost image: the pairing is broken, fall back to the SEs
    xs = [float(steps[i]) for i in kept]
    ys = smooth([float(scores[i]) for i in kept], smoothing) if kept else []
    ses = [float(per_point[i]) if math.isfinite(float(per_point[i])) else 0.0 for i in kept]
    pair_se = _Noise(ses, matrix, smoothing)
    consecutive = [pair_se(k, k + 1) for k in range(len(xs) - 1)]
    level = pooled_se(consecutive)
    if pair_se.samples is None and not any(math.isfinite(float(per_point[i])) for i in kept):
        level = math.nan  # no noise known at all
    step, reason = _rule(xs, ys, pair_se, z, patience)
    return Plateau(step, reason, level, pair_se.samples is not None)


def plateau_stop(plateau: Plateau | None, step: int, planned: int | None) -> dict[str, int] | None:
    """Where a run watching its curve stops: at `step`, the evaluation that confirms `plateau`,
    unless the run ends there anyway (`planned`: its last step). The `stopped_on_plateau` record
    its summary keeps, or None."""
    if plateau is None or plateau.reason != "plateau" or (planned is not None and step >= planned):
        return None
    return {"at_step": step, "plateau_step": int(plateau.step), "steps_saved": (planned or step) - step}


def _rule(xs: list[float], ys: list[float], pair_se: _Noise, z: float,
          patience: int) -> tuple[int | float | None, Reason]:
    n = len(ys)

    def improved_after(k: int) -> bool:
        return any(ys[j] - ys[k] > z * pair_se(k, j) for j in range(k + 1, n))

    if n == 0 or not improved_after(0):
        return None, "no_gain"
    for k in range(1, n - patience):
        if not improved_after(k):
            return _as_given(xs[k]), "plateau"
    return None, "still_rising"


def best(steps: Sequence[float], scores: Sequence[float]) -> tuple[float, float]:
    """(step, score) of the highest score; ties go to the earliest (cheaper) step.

    Raises ValueError when there is no finite score at all.
    """
    kept = _checked(steps, scores)
    if not kept:
        raise ValueError("best() needs at least one finite score")
    i = max(kept, key=lambda k: (float(scores[k]), -k))
    return _as_given(float(steps[i])), float(scores[i])


def _as_given(step: float) -> int | float:
    # Steps are usually ints; hand them back as ints so callers can index checkpoints.
    return int(step) if float(step).is_integer() else step


# ---------------------------------------------------------------- an arm of several runs


class Curve(NamedTuple):
    """One run's curve: eval steps, scores, their SEs (NaN where unknown) and, if known, the
    per-image scores of each evaluation (`find_plateau`'s `samples`)."""

    steps: Sequence[float]
    scores: Sequence[float]
    ses: Sequence[float]
    samples: Sequence[Sequence[float]] | None = None


@dataclass(frozen=True)
class ArmPlateau:
    """The plateau of an arm (one configuration over several seeds).

    step / reason / noise: the rule applied to the seed-mean curve (`steps`, `mean`), the
    runs as paired samples: the SE of a difference between two steps is the spread over
    runs of each run's own difference / sqrt(runs), which holds training-seed and eval
    noise alike (one run: the run's own rule). low / high: a percentile-bootstrap interval
    (`level`) of the plateau step over runs resampled with replacement, among resamples that
    found a plateau; None with one run or when none did. `run_reasons`: each run's own
    reason, counted; `resample_reasons`: the share of resamples per reason (how sure the
    arm's reason is).
    """

    step: int | float | None
    reason: Reason
    noise: float
    low: float | None
    high: float | None
    level: float
    runs: int
    run_reasons: dict[str, int] = field(default_factory=dict)
    resample_reasons: dict[str, float] = field(default_factory=dict)
    steps: list[int | float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)


def _on_grid(curve: Curve, grid: np.ndarray) -> np.ndarray:
    """A run's finite scores on the arm's step grid: linear between its evaluations, its last
    score carried forward after its end (a run stopped on its plateau stays there), its
    first carried back before its start."""
    pts = [(float(t), float(y)) for t, y in zip(curve.steps, curve.scores, strict=True) if math.isfinite(float(y))]
    if not pts:
        raise ValueError("a curve has no finite score")
    xs, ys = zip(*pts, strict=True)
    return np.interp(grid, xs, ys)


def run_plateau(curve: Curve, *, z: float = 2.0, patience: int = 2, smoothing: int = 1) -> Plateau:
    """`find_plateau` of one run's `Curve` (paired when it carries samples)."""
    return find_plateau(curve.steps, curve.scores, list(curve.ses), samples=curve.samples, z=z,
                        patience=patience, smoothing=smoothing)


def arm_plateau(curves: Sequence[Curve], *, z: float = 2.0, patience: int = 2, smoothing: int = 1,
                resamples: int = 2000, level: float = 0.95, seed: int = 0) -> ArmPlateau:
    """Find an arm's plateau on its seed-mean curve, with a bootstrap interval over its runs.

    Every run is put on the union of the runs' eval steps (`_on_grid`), and `find_plateau`
    judges the per-step mean with the runs as its paired samples. Deterministic for a given
    `seed`.
    """
    if not curves:
        raise ValueError("arm_plateau needs at least one curve")
    rule = {"z": z, "patience": patience, "smoothing": smoothing}
    grid = np.array(sorted({float(t) for c in curves for t in c.steps}))
    values = np.stack([_on_grid(c, grid) for c in curves])  # (runs, steps)
    own = [run_plateau(c, **rule) for c in curves]
    run_reasons = Counter(p.reason for p in own)
    n = len(curves)

    def judge(sample: np.ndarray) -> Plateau:  # sample: (runs, steps)
        return find_plateau(grid, sample.mean(axis=0), samples=sample.T, **rule)

    whole = own[0] if n == 1 else judge(values)
    low = high = None
    shares: dict[str, float] = {}
    if n > 1 and resamples > 0:
        rng = np.random.default_rng(seed)
        found = [judge(values[rng.integers(0, n, n)]) for _ in range(resamples)]
        counts = Counter(p.reason for p in found)
        shares = {r: counts[r] / resamples for r in REASONS if counts[r]}
        steps = [float(p.step) for p in found if p.step is not None]
        if steps:
            tail = (1.0 - level) / 2 * 100
            low, high = (float(v) for v in np.percentile(steps, [tail, 100 - tail]))
    return ArmPlateau(whole.step, whole.reason, whole.noise, low, high, level, n,
                      {r: run_reasons[r] for r in REASONS if run_reasons[r]}, shares,
                      [_as_given(t) for t in grid], [float(v) for v in values.mean(axis=0)])
