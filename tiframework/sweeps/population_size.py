"""How many runs a sweep worker trains at once (`--population`, `population:` in the sweep file).

A population shares the frozen model's forward and backward passes between its members
(`training.population.train`), so more members cost less per sample, up to what the device can
use at once and what its memory holds. `auto` picks:

- on a CPU: `CPU_SWEET_SPOT` members, the size past which the per-sample cost stopped
  falling in `benchmarks/population.py` on 2 cores (benchmarks/RESULTS.md, "Population
  training"), fewer if the free RAM cannot hold that many members' activations;
- on a GPU: as many members as the free GPU memory holds, at the training step's
  estimated memory per member (`sizing.memory.estimate_step_memory`, issue 13's
  fake-tensor count), at most `GPU_MOST` (the largest K the benchmark measures).

The memory comes from the runner (`sweeps.runner.TrainRunner.member_memory`), so this module
loads no torch: a sweep worker starts light and loads the training stack with its runner.

Pruning judges a trial at each evaluation against trials told before it. A search with a
pruner and one run per trial trains as a rolling population (`sweeps.rolling`: a member that
finishes or is pruned hands its place to the next trial), sized as above; other pruning
sweeps (`seeds:` with several seeds, a runner without `run_rolling`) run one trial at a time
(said in the log, also when a K was asked for).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tiframework.config import ExperimentConfig
from tiframework.errors import UserError
from tiframework.sweeps.schema import SweepConfig

log = logging.getLogger(__name__)
MIB = 2**20
CPU_SWEET_SPOT = 8
GPU_MOST = 16
# Share of the free memory members' training may take: the rest is headroom for batched
# evaluation images, the allocator's rounding and what the estimate cannot see (CUDA
# workspaces), which issue 13's notes put somewhat above the count.
MEMORY_SHARE = 0.7


@dataclass(frozen=True)
class PopulationSize:
    k: int
    reason: str


@dataclass(frozen=True)
class MemberMemory:
    """The device and its memory as seen before the first population: bytes free, bytes of
    frozen weights still to be placed there, and one member's training-step bytes."""

    device: str
    free: int
    weights: int
    per_member: int


# A runner's `member_memory(sweep, base)`: the device's memory and one member's step bytes.
MemoryEstimate = Callable[[SweepConfig, ExperimentConfig], MemberMemory]


def parse_population(text: str) -> int | str:
    """`--population` on the command line: a whole number >= 1, or `auto`."""
    if text == "auto":
        return text
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise UserError(f"--population {text}: give a number of runs trained at once (1 or more) or auto")
    return k


def choose_size(requested: int | str, *, pruner: str, memory: MemberMemory | None, workers: int = 1,
                why_no_memory: str = "", rolling: bool = False) -> PopulationSize:
    """K for a worker, with the reason logged. `memory` None: no estimate (`why_no_memory`).
    `rolling`: pruning with a rolling population (`sweeps.rolling`), sized like any other."""
    if pruner != "none" and not rolling:
        asked = f"; --population {requested} is not used" if requested not in ("auto", 1) else ""
        return PopulationSize(1, f"pruning is on (pruner: {pruner}), and populations are for searches without "
                                 f"pruning: one trial at a time{asked}")
    if requested != "auto":
        return PopulationSize(int(requested), "as asked (--population or population: in the sweep file)")
    if memory is None:
        return PopulationSize(1, f"auto: no memory estimate ({why_no_memory}), so one run at a time")
    share = f"{workers} workers share it, " if workers > 1 else ""
    budget = max(0, int((memory.free - memory.weights) * MEMORY_SHARE / workers))
    fits = budget // max(1, memory.per_member)
    where = (f"{memory.free / 2**30:.1f} GiB free, {share}~{memory.per_member / MIB:.0f} MiB per member "
             f"(training step estimate), {MEMORY_SHARE:.0%} of it for members")
    if memory.device == "cpu":
        k = max(1, min(CPU_SWEET_SPOT, fits))
        return PopulationSize(k, f"auto on the CPU: {CPU_SWEET_SPOT} is the measured sweet spot "
                                 f"(benchmarks/population.py); memory allows {fits} ({where})")
    k = max(1, min(GPU_MOST, fits))
    return PopulationSize(k, f"auto on the GPU: memory allows {fits} ({where}), at most {GPU_MOST}")


def population_size(requested: int | str, sweep: SweepConfig, base: ExperimentConfig, workers: int = 1,
                    rolling: bool = False, estimate: MemoryEstimate | None = None) -> PopulationSize:
    """`choose_size` with this machine's memory, from the runner's `estimate` (called only when
    `auto` needs it; a runner without one trains one run at a time under `auto`)."""
    memory, why = None, "this runner gives none"
    if requested == "auto" and (sweep.pruner == "none" or rolling) and estimate is not None:
        try:
            memory = estimate(sweep, base)
        except Exception as exc:  # the estimate is a guide; a sweep must not fail on it
            why = f"{type(exc).__name__}: {exc}"[:200]
    return choose_size(requested, pruner=sweep.pruner, memory=memory, workers=workers, why_no_memory=why,
                       rolling=rolling)
