"""How precise an evaluation is: the standard error of an image-averaged score.

Every score in an eval row is a mean over the generated images (seeds x prompts), and
those images are a sample: other seeds give another mean. The standard error (SE) of that
mean over its images says how far the score would move with other seeds, so a reader (and
the plateau rule) can tell a real gain from eval noise. `benchmarks/eval_noise.py` checks
that the SE predicts the spread of re-scoring one checkpoint with disjoint seed sets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

SE_SUFFIX = "_se"


def se_key(metric: str) -> str:
    """`eval/clip_fidelity` -> `eval/clip_fidelity_se`: the eval.csv column of its SE."""
    return metric + SE_SUFFIX


def se_from_sums(total: float, total_sq: float, count: int) -> float:
    """SE of the mean from the sum and sum of squares of `count` values (NaN below 2 values).

    The sample variance uses n - 1; a tiny negative variance from float cancellation is 0.
    """
    if count < 2:
        return math.nan
    mean = total / count
    var = max(0.0, (total_sq - count * mean * mean) / (count - 1))
    return math.sqrt(var / count)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) of per-image values; SE is NaN for one value.

    Raises ValueError for no values: a score over no images does not exist.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_se needs at least one value")
    total = math.fsum(values)
    return total / len(values), se_from_sums(total, math.fsum(v * v for v in values), len(values))


def pooled_se(ses: Iterable[float]) -> float:
    """Root-mean-square of several evaluations' SEs (NaN ones skipped): the noise of one
    evaluation of a run, steadier than any single SE estimated from a dozen images.
    NaN when none is finite."""
    finite = [float(s) for s in ses if s is not None and math.isfinite(float(s))]
    if not finite:
        return math.nan
    return math.sqrt(math.fsum(s * s for s in finite) / len(finite))
