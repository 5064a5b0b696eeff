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

Pruning judges a trial at each evaluation against trials told before it. A search with a
pruner and one run per trial trains as a rolling population (`sweeps.rolling`: a member that
finishes or is pruned hands its place to the next trial), sized as above; other pruning
sweeps (`seeds:` with several seeds, a runner without `run_rolling`) run one trial at a time
(said in the log, also when a K was asked for).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psutil
import torch

from tiframework.config import ExperimentConfig, with_overrides
from tiframework.errors import UserError
from tiframework.sd.runtime import detect_machine
from tiframework.sizing.memory import estimate_step_memory
from tiframework.sweeps.schema import CategoricalParam, IntParam, SweepConfig

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


def _largest(sweep: SweepConfig, key: str, base: int) -> int:
    """The largest value a trial may give `key` (the base's, an arm's, or the space's)."""
    values = [base] + [int(over[key]) for over in (sweep.arms or {}).values() if key in over]
    param = sweep.space.get(key)
    if isinstance(param, CategoricalParam):
        values += [int(v) for v in param.choices]
    elif isinstance(param, IntParam):
        values.append(param.high)
    return max(values)


def member_memory(sweep: SweepConfig, base: ExperimentConfig) -> MemberMemory:
    """Estimate one member's step memory at the sweep's largest batch and image side, and
    read what the device has free now (the frozen model is loaded, on the CPU)."""
    machine = detect_machine(base.training.device)
    batch = _largest(sweep, "training.batch_size", base.training.batch_size)
    side = _largest(sweep, "data.max_side", base.data.max_side)
    vpt = _largest(sweep, "embedding.vectors_per_token", base.embedding.vectors_per_token)
    cfg = with_overrides(base, {"training.batch_size": batch, "data.max_side": side,
                                "embedding.vectors_per_token": vpt})
    step = estimate_step_memory(cfg, side, batch, machine)
    weights = step.by_kind.get("Parameter", 0) + step.by_kind.get("Buffer", 0)
    per_member = max(1, step.peak_bytes - weights)
    if machine.device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return MemberMemory("cuda", int(free), weights, per_member)
    # The model is already in this process's RAM: only the members' activations are new.
    return MemberMemory("cpu", int(psutil.virtual_memory().available), 0, per_member)


def population_size(requested: int | str, sweep: SweepConfig, base: ExperimentConfig,
                    workers: int = 1, rolling: bool = False) -> PopulationSize:
    """`choose_size` with this machine's memory (estimated only when `auto` needs it)."""
    memory, why = None, ""
    if requested == "auto" and (sweep.pruner == "none" or rolling):
        try:
            memory = member_memory(sweep, base)
        except Exception as exc:  # the estimate is a guide; a sweep must not fail on it
            why = f"{type(exc).__name__}: {exc}"[:200]
    return choose_size(requested, pruner=sweep.pruner, memory=memory, workers=workers, why_no_memory=why,
                       rolling=rolling)
