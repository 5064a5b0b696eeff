"""Sweep files: `sweeps/<name>.yaml`, the schema of an Optuna search over experiment settings.

A sweep names a base experiment (plus overrides), then either a search space of dotted
config keys (a search: Optuna proposes configurations) or named `arms:` (a comparison:
every arm runs once per seed, nothing is searched), an objective computed from each
run's evaluation curve, and how to search (sampler, pruner, seeds, trial count).
Everything is checked before any trial starts: unknown keys, empty ranges and values
the experiment schema rejects give one `UserError` that lists every problem. Running a
sweep lives in `tiframework.sweeps`.

`space:` and `arms:` are exclusive. An arm is a fixed configuration measured over seeds
so that `tiframework compare` can test it against the others; a search picks its best
configuration by looking at the scores, so "the best of arm A's search vs the best of
arm B's" would compare two selections, not two settings. Search first, then compare
the settings it found as arms.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from tiframework.config import (
    ExperimentConfig,
    Section,
    config_from_dict,
    describe_keys,
    load_config,
    with_overrides,
)
from tiframework.errors import UserError
from tiframework.yamltree import deep_merge, parse_overrides, read_yaml_mapping


class CategoricalParam(Section):
    type: Literal["categorical"]
    choices: list[Any] = Field(description="the values to try (numbers, strings such as LR schedules, booleans)")

    @model_validator(mode="after")
    def _not_empty(self) -> CategoricalParam:
        if not self.choices:
            raise ValueError("choices is empty; list at least one value")
        if any(isinstance(c, (list, dict)) for c in self.choices):
            raise ValueError("choices must be plain values (Optuna stores numbers, strings, booleans)")
        return self


class IntParam(Section):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if self.low >= self.high:
            raise ValueError(f"empty range: low ({self.low}) must be below high ({self.high})")
        if self.log and (self.step != 1 or self.low < 1):
            raise ValueError("log ranges need low >= 1 and step 1")
        return self


class FloatParam(Section):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if self.low >= self.high:
            raise ValueError(f"empty range: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log ranges need low > 0")
        return self


Param = Annotated[CategoricalParam | IntParam | FloatParam, Field(discriminator="type")]


class ConfirmConfig(Section):
    """After a search: its best configurations trained again on fresh seeds, as a comparison."""

    top: int = Field(3, ge=1, description="the search's best K configurations (by objective value) to confirm")
    seeds: int = Field(5, ge=2, description="fresh training seeds per configuration, none of the search's")
    baseline: bool = Field(True, description="also confirm the base experiment's own settings (arm `baseline`)")
Direction = Literal["maximize", "minimize"]
OBJECTIVES: dict[str, list[str]] = {
    # objective -> the names of its values, in order (shown in reports and dashboards)
    "best_fidelity": ["best_fidelity"],
    "plateau_fidelity": ["plateau_fidelity"],
    "fidelity_flexibility": ["best_fidelity", "flexibility"],
    "val_loss": ["val_loss"],
}
# A value's direction when the sweep file gives none: a loss is minimised, scores are maximised.
DEFAULT_DIRECTIONS = {"val_loss": "minimize"}
# The sweep owns these: one frozen model per worker, and its own run folders and W&B grouping.
RESERVED_PREFIXES = ("model.", "logging.", "resume")
# Folders a study folder already holds (reports, W&B): an arm's run folders must not collide.
RESERVED_ARM_NAMES = ("report", "compare", "wandb")
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
STUDY_NAME_RULE = "a study name may use letters, digits, '.', '_' and '-' (it names a folder)"


class SweepConfig(Section):
    experiment: str = Field(description="base experiment YAML, relative to the sweep file")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted keys applied to the experiment")
    space: dict[str, Param] = Field(
        default_factory=dict, description="a search: dotted config key -> categorical / int / float distribution"
    )
    arms: dict[str, dict[str, Any]] | None = Field(
        None, description="a comparison instead of a search: arm name -> dotted overrides; every arm runs once "
        "per seed into <study>/<arm>/seed-<s>/ (exclusive with space)",
    )
    objective: Literal[tuple(OBJECTIVES)] = Field(
        "best_fidelity",
        description="held-out CLIP fidelity of the checkpoint best on the selection seeds; held-out fidelity at "
        "the plateau step (last eval if none); (best fidelity, flexibility there) for a Pareto front; or val_loss, "
        "the lowest held-out validation loss of the run (needs validation.every; minimised by default)",
    )
    direction: Direction | list[Direction] | None = Field(None, description="per objective; default maximize "
                                                          "(minimize for val_loss)")
    n_trials: int | None = Field(None, ge=1, description="trials in the study (default: grid size, or 20)")
    sampler: Literal["tpe", "grid", "random"] = "tpe"
    sampler_seed: int | None = None
    pruner: Literal["none", "median", "hyperband", "noise"] = Field(
        "none", description="prunes on the fidelity reported at each eval step (by optimizer step); noise: only "
        "when worse than the best trial at that step beyond both evaluations' standard errors (sweeps.pruning)"
    )
    pruner_alpha: float = Field(0.01, gt=0, lt=1, description="noise: the one-sided test's level for stopping")
    pruner_startup_trials: int = Field(5, ge=0, description="median: trials that finish before any pruning")
    pruner_warmup_steps: int = Field(0, ge=0, description="median: optimizer steps before a trial can be pruned")
    seeds: list[int] | None = Field(
        None, min_length=1, description="training.seed values; each configuration runs once per seed (mean)"
    )
    study_name: str | None = Field(None, description="default: the sweep file's stem")
    confirm: ConfirmConfig | None = Field(
        None, description="after the search, re-train the top configurations (and the baseline) on fresh seeds as "
        "a comparison study `<study>-confirm`; sweep-report leads with its answer",
    )
    population: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="runs a worker trains at once through one frozen model (`train_population`), each "
        "a trial's run as if alone; auto: from the device and its free memory; 1 with pruning (`--population` wins)",
    )
    heartbeat_interval: int = Field(30, ge=1, description="seconds between a running trial's heartbeats")
    grace_period: int = Field(120, ge=2, description="seconds without a heartbeat before a trial counts as dead")
    max_retry: int = Field(2, ge=0, description="times a dead worker's trial is re-run")

    _path: Path | None = PrivateAttr(None)
    _base: ExperimentConfig | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        self._check_arms()
        n = len(OBJECTIVES[self.objective])
        if isinstance(self.direction, list) and len(self.direction) != n:
            raise ValueError(f"direction lists {len(self.direction)} values; objective {self.objective} has {n}")
        if self.confirm is not None and (self.arms is not None or n > 1):
            raise ValueError("confirm: needs a search (space:) with a single objective")
        if n > 1 and self.pruner != "none":
            raise ValueError("pruning needs a single objective (Optuna cannot prune multi-objective trials)")
        if self.objective == "val_loss" and self.pruner != "none":
            raise ValueError("the pruners judge the fidelity evaluations report; objective val_loss needs pruner: none")
        if self.sampler == "grid":
            ranged = [k for k, p in self.space.items() if not isinstance(p, CategoricalParam)]
            if ranged:
                raise ValueError(f"sampler grid needs categorical choices; {', '.join(ranged)} are ranges")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError("grace_period must be longer than heartbeat_interval")
        if self.study_name is not None and not _STUDY_NAME.match(self.study_name):
            raise ValueError(STUDY_NAME_RULE)
        return self

    def _check_arms(self) -> None:
        if self.arms is None:
            if not self.space:
                raise ValueError("give a search `space:` or comparison `arms:`")
            return
        problems = []
        if self.space:
            problems.append("space and arms are exclusive: a sweep either searches or compares fixed arms")
        if len(self.arms) < 2:
            problems.append(f"arms: a comparison needs at least two arms (have {len(self.arms)})")
        for name in self.arms:
            if not _STUDY_NAME.match(name) or name in RESERVED_ARM_NAMES:
                problems.append(f"arms.{name}: an arm name may use letters, digits, '.', '_' and '-' (it names a "
                                f"folder) and is not one of {', '.join(RESERVED_ARM_NAMES)}")
        if not self.seeds:
            problems.append("arms need `seeds:` (each arm runs once per seed; at least 2 for an interval)")
        elif len(set(self.seeds)) != len(self.seeds):
            problems.append("seeds: a seed is listed twice")
        if self.pruner != "none":
            problems.append("arms run every seed to the end (a comparison needs whole curves): set pruner: none")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def path(self) -> Path:
        if self._path is None:
            raise ValueError("this SweepConfig was not loaded from a file")
        return self._path

    @property
    def base(self) -> ExperimentConfig:
        """The checked experiment every trial starts from (see `base_config`), set by `load_sweep`."""
        if self._base is None:
            raise ValueError("this SweepConfig was not loaded with load_sweep")
        return self._base

    @property
    def directions(self) -> list[str]:
        n = len(OBJECTIVES[self.objective])
        if self.direction is None:
            return [DEFAULT_DIRECTIONS.get(name, "maximize") for name in OBJECTIVES[self.objective]]
        return list(self.direction) if isinstance(self.direction, list) else [self.direction] * n

    @property
    def grid_size(self) -> int:
        if self.arms:
            return len(self.arms) * len(self.seeds or [])
        size = 1
        for p in self.space.values():
            size *= len(p.choices) if isinstance(p, CategoricalParam) else 0
        return size

    def total_trials(self, override: int | None = None) -> int:
        """`--n-trials`, else `n_trials`, else the grid size (grid) or 20; a grid is never repeated."""
        if self.arms:  # one trial per arm x seed, never repeated
            return min(override or self.n_trials or self.grid_size, self.grid_size)
        n = override or self.n_trials or (self.grid_size if self.sampler == "grid" else 20)
        return min(n, self.grid_size) if self.sampler == "grid" else n

    def default_study_name(self) -> str:
        return self.study_name or self.path.stem


def check_study_name(name: str) -> str:
    if not _STUDY_NAME.match(name):
        raise UserError(f"study name {name!r}: {STUDY_NAME_RULE}")
    return name


def _sample_values(param: CategoricalParam | IntParam | FloatParam) -> list[Any]:
    """The values that must all be valid config values: every choice, or both ends of a range."""
    return list(param.choices) if isinstance(param, CategoricalParam) else [param.low, param.high]


def arm_problems(sweep: SweepConfig, base: ExperimentConfig, known: set[str]) -> list[str]:
    """Every problem with the arms against the base experiment (empty when fine)."""
    problems = []
    for arm, overrides in (sweep.arms or {}).items():
        bad = len(problems)
        for key, value in overrides.items():
            where = f"arms.{arm}.{key}"
            if key not in known:
                problems.append(f"{where}: not a config key (see `tiframework config keys`)")
            elif key.startswith(RESERVED_PREFIXES):
                problems.append(f"{where}: an arm cannot vary {key} (one model per worker; the sweep names runs)")
            elif key == "training.seed":
                problems.append(f"{where}: seeds come from `seeds:`, the same for every arm")
            else:
                try:
                    with_overrides(base, {key: value})
                except UserError as err:
                    problems.append(f"{where}: value {value!r} is rejected: {str(err).removeprefix('config: ')}")
        if len(problems) == bad:
            try:  # each key alone is fine; together they must be too
                with_overrides(base, overrides)
            except UserError as err:
                problems.append(f"arms.{arm}: rejected: {str(err).removeprefix('config: ')}")
    return problems


def space_problems(sweep: SweepConfig, base: ExperimentConfig) -> list[str]:
    """Every problem with the search space or the arms against the base experiment (empty when fine)."""
    known = {key for key, _, _ in describe_keys()}
    problems = arm_problems(sweep, base, known)
    for key, param in sweep.space.items():
        if key not in known:
            problems.append(f"space.{key}: not a config key (see `tiframework config keys`)")
            continue
        if key.startswith(RESERVED_PREFIXES):
            problems.append(f"space.{key}: a sweep cannot vary {key} (one model per worker; the sweep names runs)")
            continue
        if key == "training.seed" and sweep.seeds:
            problems.append("space.training.seed: conflicts with `seeds:`; use one or the other")
        for value in _sample_values(param):
            try:
                with_overrides(base, {key: value})
            except UserError as err:
                problems.append(f"space.{key}: value {value!r} is rejected: {str(err).removeprefix('config: ')}")
    if sweep.objective == "val_loss":
        if base.validation.every <= 0:
            problems.append("objective val_loss needs the validation loss: set validation.every")
    elif base.eval.every <= 0:
        problems.append("eval.every is 0: sweep objectives need evaluation during training; set eval.every")
    return problems


def base_config(sweep: SweepConfig, cli_overrides: list[str] | None = None) -> ExperimentConfig:
    """The experiment every trial starts from: the file, then the sweep's overrides, then the CLI's.

    Raises one UserError naming every problem of the search space against it.
    """
    experiment = (sweep.path.parent / sweep.experiment).resolve()
    cfg = with_overrides(load_config(experiment), sweep.overrides)
    if cli_overrides:
        cfg = config_from_dict(deep_merge(cfg.model_dump(), parse_overrides(cli_overrides)), source="overrides")
    problems = space_problems(sweep, cfg)
    if problems:
        raise UserError(f"{sweep.path}: the sweep cannot start:\n  " + "\n  ".join(problems))
    return cfg


def load_sweep(path: str | Path, cli_overrides: list[str] | None = None) -> SweepConfig:
    """Read and fully check a sweep file (its base experiment included); raise UserError if bad."""
    path = Path(path)
    data = read_yaml_mapping(path, "sweep file", "a sweep file is a mapping (experiment, space, objective, ...)")
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as err:
        parts = []
        for e in err.errors():
            # Drop pydantic's discriminator tags (`space.x.int.low` -> `space.x.low`).
            loc = [str(p) for p in e["loc"] if p not in ("categorical", "int", "float")]
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
            parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
        raise UserError(f"{path}: " + "; ".join(parts)) from None
    sweep._path = path.resolve()
    # Checks the space against the real experiment now, not at trial 1; kept for the workers.
    sweep._base = base_config(sweep, cli_overrides)
    return sweep


def trial_overrides(sweep: SweepConfig, study: str, number: int, params: dict[str, Any],
                    seed: int | None, runs_dir: str) -> dict[str, Any]:
    """Dotted overrides that turn the base experiment into one run of one trial."""
    run_id = f"trial-{number}" + (f"-seed-{seed}" if sweep.seeds and len(sweep.seeds) > 1 else "")
    # W&B tags are capped at 64 characters; keep the leaf key so dashboards can filter by value.
    tags = [f"sweep={study}", f"trial={number}"] + [f"{k.rsplit('.', 1)[-1]}={v}"[:64] for k, v in params.items()]
    out: dict[str, Any] = dict(params)
    if seed is not None:
        out["training.seed"] = seed
        tags.append(f"seed={seed}")
    out.update({
        "logging.runs_dir": str(Path(runs_dir) / "sweeps"), "logging.experiment": study,
        "logging.run_id": run_id, "logging.wandb_group": study, "logging.wandb_tags": tags,
        "logging.wandb_job_type": "sweep",
    })
    return out


def arm_run_overrides(sweep: SweepConfig, study: str, arm: str, seed: int, runs_dir: str) -> dict[str, Any]:
    """Dotted overrides that turn the base experiment into one arm's run with one seed:
    `<runs_dir>/sweeps/<study>/<arm>/seed-<seed>/`, W&B group = study, `arm` and `seed` recorded."""
    out: dict[str, Any] = dict((sweep.arms or {})[arm])
    out.update({
        "training.seed": seed, "logging.runs_dir": str(Path(runs_dir) / "sweeps"), "logging.experiment": study,
        "logging.run_id": f"{arm}/seed-{seed}", "logging.arm": arm, "logging.wandb_group": study,
        "logging.wandb_tags": [f"sweep={study}", f"arm={arm}"[:64], f"seed={seed}"],
        "logging.wandb_job_type": "ablation",
    })
    return out


def sweep_dir(base: ExperimentConfig, study: str) -> Path:
    """`<runs_dir>/sweeps/<study>/`: the journal, the trials' run folders and the report."""
    return Path(base.logging.runs_dir) / "sweeps" / study
