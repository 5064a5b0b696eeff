"""Learning-rate schedules: A1111's schedule string, and cosine with warm restarts.

A1111 syntax: `"0.0005:5000, 0.0001:10000"` — each rate holds until the optimizer step
reaches its end step; a bare rate (or end step -1) runs to the end of training. Training
stops when the schedule runs out (A1111 trains to min(max_steps, last end step)).

One deliberate difference: when an entry ends exactly at `max_steps` and another follows
(`"0.005:5000, 0.001"` with max_steps 5000), A1111's schedule iterator moves on to the next
entry instead of finishing, so it trains one more step (5001) at the next rate. We stop at
`max_steps`: the step budget, the last saved file and sweeps' comparisons then mean what
max_steps says. At every other step of every well-formed schedule the rates agree
(tests/training/test_schedules.py runs a restatement of A1111's scheduler against ours).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from tiframework.config import TrainingConfig
from tiframework.errors import UserError


@dataclass(frozen=True)
class Segment:
    rate: float
    end_step: int | None  # None: until max_steps


def parse_schedule(text: str) -> list[Segment]:
    """Parse `"0.0005:5000, 0.0001:10000"` into segments; end steps must increase."""
    segments: list[Segment] = []
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UserError("training.learning_rate: empty schedule; e.g. '0.005' or '0.0005:5000, 0.0001:10000'")
    for i, part in enumerate(parts):
        rate_text, _, end_text = part.partition(":")
        try:
            rate = float(rate_text)
            end = int(end_text) if end_text.strip() else -1
        except ValueError:
            raise UserError(
                f"training.learning_rate: cannot read {part!r}; write RATE or RATE:END_STEP, "
                "e.g. '0.0005:5000, 0.0001:10000'"
            ) from None
        if not rate > 0 or math.isinf(rate):
            raise UserError(f"training.learning_rate: rate {rate_text.strip()!r} must be a positive number")
        if end == -1 and i != len(parts) - 1:
            raise UserError(f"training.learning_rate: {part!r} runs to the end, so it must be the last entry")
        if end != -1 and end < 1:
            raise UserError(f"training.learning_rate: end step in {part!r} must be >= 1 (or -1 for 'to the end')")
        if segments and end != -1 and segments[-1].end_step is not None and end <= segments[-1].end_step:
            raise UserError(f"training.learning_rate: end steps must increase ({part!r})")
        segments.append(Segment(rate, None if end == -1 else end))
    return segments


def total_steps(segments: list[Segment], max_steps: int) -> int:
    """Optimizer steps training will run: max_steps, or fewer if the schedule runs out."""
    last = segments[-1].end_step
    return max_steps if last is None else min(max_steps, last)


def a1111_extra_step(segments: list[Segment], max_steps: int) -> float | None:
    """The rate of the one step A1111 would train past `max_steps` (see the module docstring), or None."""
    for seg, following in zip(segments, segments[1:], strict=False):  # neighbours
        if seg.end_step == max_steps:
            return following.rate
    return None


def rate_at(segments: list[Segment], step: int) -> float:
    """The rate for the optimizer step that follows `step` completed steps.

    A1111 applies `rate` while `step < end_step`; finished pairs are skipped, which is
    also what makes resuming at step N land in the right segment.
    """
    for seg in segments:
        if seg.end_step is None or step < seg.end_step:
            return seg.rate
    return segments[-1].rate


def cosine_restarts_rate(base: float, step: int, cycle: int, mult: int = 1, min_rate: float = 0.0) -> float:
    """Cosine annealing with warm restarts (SGDR), as torch's CosineAnnealingWarmRestarts."""
    length, t = cycle, step
    while t >= length:
        t -= length
        length *= mult
    return min_rate + (base - min_rate) * (1 + math.cos(math.pi * t / length)) / 2


@lru_cache(maxsize=64)
def _segments(text: str) -> tuple[Segment, ...]:
    return tuple(parse_schedule(text))


def learning_rate(training: TrainingConfig, step: int) -> float:
    """The rate for the optimizer step after `step` completed steps: the one rule solo and
    population training share (`training.lr_scheduler`: A1111's schedule or cosine restarts)."""
    segments = _segments(str(training.learning_rate))
    if training.lr_scheduler == "cosine_restarts":
        return cosine_restarts_rate(segments[0].rate, step, training.cosine_cycle_steps, training.cosine_cycle_mult)
    return rate_at(list(segments), step)


def training_steps(training: TrainingConfig) -> int:
    """Optimizer steps a run of `training` trains from step 0: max_steps, or fewer if its schedule ends first."""
    return total_steps(list(_segments(str(training.learning_rate))), training.max_steps)
