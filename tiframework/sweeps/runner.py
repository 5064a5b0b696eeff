"""The real runner: a sweep worker's frozen model and training, `load_model` then `train`.

A worker (`sweeps.worker`) names its runner and imports it by name, as it imports a
test's cheap runner, so the sweep machinery itself loads no torch; this module brings
the training stack: one run (`train`), runs trained together (`train_population`, as a
batch or as a rolling population) and the memory estimate that sizes `population: auto`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psutil
import torch

from tiframework.config import ExperimentConfig, ModelConfig, with_overrides
from tiframework.sd.models import load_model
from tiframework.sd.runtime import detect_machine
from tiframework.sizing.memory import estimate_step_memory
from tiframework.sweeps.population import PopulationFailed
from tiframework.sweeps.population_size import MemberMemory
from tiframework.sweeps.schema import CategoricalParam, IntParam, SweepConfig
from tiframework.training.population.compatible import check_compatible
from tiframework.training.population.module import MemberCallback
from tiframework.training.population.train import open_member, plan_member, train_population
from tiframework.training.train import train


class TrainRunner:
    """The real thing: `load_model`, then `train` with the loaded parts."""

    def load(self, model: ModelConfig) -> Any:
        return load_model(model)

    def run(self, cfg: ExperimentConfig, parts: Any, on_eval: Any) -> dict[str, Any]:
        return train(cfg, parts=parts, on_eval=on_eval)

    def run_population(self, cfgs: list[ExperimentConfig], parts: Any, on_evals: list[Any]) -> list[dict[str, Any]]:
        return train_members(cfgs, parts, on_evals)

    def run_rolling(self, cfgs: list[ExperimentConfig], parts: Any, on_evals: list[Any], on_leave: Any) -> None:
        train_rolling(cfgs, parts, on_evals, on_leave)

    def member_memory(self, sweep: SweepConfig, base: ExperimentConfig) -> MemberMemory:
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


def _largest(sweep: SweepConfig, key: str, base: int) -> int:
    """The largest value a trial may give `key` (the base's, an arm's, or the space's)."""
    values = [base] + [int(over[key]) for over in (sweep.arms or {}).values() if key in over]
    param = sweep.space.get(key)
    if isinstance(param, CategoricalParam):
        values += [int(v) for v in param.choices]
    elif isinstance(param, IntParam):
        values.append(param.high)
    return max(values)


class _Relay(MemberCallback):
    """Each member's evaluation rows to its trial's `on_eval`; the summaries of members that finished."""

    def __init__(self, on_evals: Sequence[Callable[[dict[str, float]], None]]):
        self.on_evals = on_evals
        self.finished: dict[int, dict[str, Any]] = {}

    def on_member_eval(self, trainer, population, member, row) -> None:
        self.on_evals[member.index](row)

    def on_member_leave(self, trainer, population, member) -> None:
        if member.summary is not None:  # its final files and summary.json are written
            self.finished[member.index] = member.summary


def train_members(cfgs: Sequence[ExperimentConfig], parts: Any,
                  on_evals: Sequence[Callable[[dict[str, float]], None]]) -> list[dict[str, Any]]:
    """`train_population` with each member's rows sent to its own callback (a Runner's `run_population`)."""
    relay = _Relay(on_evals)
    try:
        return train_population(cfgs, parts=parts, callbacks=[relay])
    except Exception as exc:
        raise PopulationFailed(exc, dict(relay.finished)) from exc


class _Rolling(MemberCallback):
    """A rolling population (`sweeps.rolling`): a member whose trial is pruned stops at once; one that
    leaves hands its place to the next trial's run, which joins at its own step 0."""

    def __init__(self, on_evals: Sequence[Callable[[dict[str, float]], bool]], on_leave: Callable[..., Any]):
        self.on_evals, self.on_leave = list(on_evals), on_leave

    def on_member_eval(self, trainer, population, member, row) -> None:
        if self.on_evals[member.index](row):
            member.request_stop()  # pruned: it leaves after this step, its trial told PRUNED

    def on_member_leave(self, trainer, population, member) -> None:
        nxt = self.on_leave(member.index, member.summary, None)
        while nxt is not None:
            cfg, on_eval = nxt
            index = len(self.on_evals)
            self.on_evals.append(on_eval)
            try:
                check_compatible([population.members[0].cfg, cfg])
                population.join(open_member(plan_member(index, cfg, population.parts), population.parts))
                return
            except Exception as exc:  # fails this trial only; the next one takes the place
                nxt = self.on_leave(index, None, exc)


def train_rolling(cfgs: Sequence[ExperimentConfig], parts: Any, on_evals: Sequence[Callable[[dict[str, float]], bool]],
                  on_leave: Callable[..., Any]) -> None:
    """`train_population` as a rolling population (a Runner's `run_rolling`, see `sweeps.rolling`)."""
    train_population(cfgs, parts=parts, callbacks=[_Rolling(on_evals, on_leave)])
