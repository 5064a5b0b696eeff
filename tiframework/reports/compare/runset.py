"""Run folders read back for a comparison, grouped into arms, with what differs between them.

A run folder holds `config.yaml` (the resolved config: arms are told apart by its keys),
`eval.csv` (one row per evaluation, step 0 the init-text baseline) and `summary.json`.
Runs are grouped into arms by config keys (`--by`) or by the arm a sweep recorded
(`logging.arm`). Runs of one arm that differ in any other setting that changes results
are never pooled: that is an error naming the keys. Arms that differ in more than the
keys that define them are compared, and the report names those keys as confounders.
Each run's `provenance.json` is read too: runs of one arm trained on different data (dataset
hash) are never pooled, and arms that ran different code (version, commit, dirty flag) are
compared with a warning, the code version named as a confounder.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from tiframework.config import describe_keys
from tiframework.errors import UserError
from tiframework.yamltree import flatten

# Settings that do not change what a run measures: where things are written, the replicate's
# seed, previews (their own generation settings), how often embeddings are saved, resume (a
# resumed run repeats the uninterrupted one), and the diagnostics' warning thresholds.
NOT_RESULT_KEYS = ("logging.", "training.seed", "training.save_every", "data.cache_dir", "data.num_workers",
                   "preview.", "resume", "eval.verdict_after", "eval.verdict_margin", "eval.fried_threshold")
log = logging.getLogger(__name__)
SKIP_DIRS = {"embeddings", "previews", "eval_images", "wandb", "report", "compare"}


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_eval_csv(path: Path) -> list[dict[str, float]]:
    """eval.csv rows as numbers (empty and non-finite cells left out), ordered by step."""
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row = {k: v for k, v in ((k, _number(v)) for k, v in raw.items() if k) if v is not None}
            if "step" in row:
                row["step"] = int(row["step"])
                rows.append(row)
    return sorted(rows, key=lambda r: r["step"])


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    rows: list[dict[str, float]]
    summary: dict[str, Any]
    arm: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)  # {} for runs made before it was written

    @cached_property
    def flat(self) -> dict[str, Any]:
        return flatten(self.config)

    @property
    def seed(self) -> int | None:
        return self.flat.get("training.seed")

    @property
    def problem(self) -> str | None:
        """Why this run cannot be compared (None when it can)."""
        if not self.summary:
            return "unfinished or crashed (no summary.json)"
        if self.summary.get("stopped"):
            return f"stopped early: {self.summary['stopped']}"
        if not self.rows:
            return "no evaluation rows (eval.every was 0?)"
        return None


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "eval.csv").is_file()


def read_run(path: Path) -> Run:
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
        rows = read_eval_csv(path / "eval.csv")
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
        origin = json.loads((path / "provenance.json").read_text()) if (path / "provenance.json").is_file() else {}
    except (OSError, yaml.YAMLError, json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable run folder ({exc}); remove it from the targets") from None
    return Run(path, config, rows, summary, provenance=origin)


def find_run_dirs(folder: Path) -> list[Path]:
    """Run folders at or below `folder` (hidden folders and a run's own sub-folders skipped)."""
    if is_run_dir(folder):
        return [folder]
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        if not sub.name.startswith(".") and sub.name not in SKIP_DIRS:
            found += find_run_dirs(sub)
    return found


@dataclass
class Arm:
    name: str
    overrides: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    excluded: list[dict[str, str]] = field(default_factory=list)  # {"run": path, "reason": why}

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]


@dataclass
class RunSet:
    arms: list[Arm]
    source: str
    group: str  # the W&B group (a sweep's study name) and the report's title
    by: list[str]  # the keys that define the arms
    default_out: Path = Path("compare")  # where the report goes unless --out says otherwise
    notes: list[str] = field(default_factory=list)
    confounders: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {arm: value}

    @property
    def wandb_project(self) -> str | None:
        """The runs' W&B project when they share one (None: the default)."""
        projects = {r.flat.get("logging.wandb_project") for a in self.arms for r in a.runs}
        return next(iter(projects)) if len(projects) == 1 else None


def check_keys(keys: list[str]) -> None:
    known = {k for k, _, _ in describe_keys()}
    bad = [k for k in keys if k not in known]
    if bad:
        raise UserError(f"--by {', '.join(bad)}: not a config key (see `tiframework config keys`)")


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, _value_text(value))


def group_by_keys(runs: list[Run], by: list[str]) -> list[Arm]:
    """One arm per distinct combination of the `by` values, named `leaf=value, ...`, in value order."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    values: dict[tuple[str, ...], tuple[Any, ...]] = {}
    for run in runs:
        vals = tuple(run.flat.get(k) for k in by)
        key = tuple(_value_text(v) for v in vals)
        groups.setdefault(key, []).append(run)
        values[key] = vals
    arms = []
    for key in sorted(groups, key=lambda k: tuple(_sort_key(v) for v in values[k])):
        name = ", ".join(f"{k.rsplit('.', 1)[-1]}={t}" for k, t in zip(by, key, strict=True))
        arms.append(Arm(name, dict(zip(by, values[key], strict=True)), groups[key]))
    return arms


def group_by_recorded_arm(runs: list[Run], order: list[str] | None = None) -> list[Arm]:
    """One arm per `logging.arm` (the arm a sweep with `arms:` recorded), in `order` if given,
    else in the order the runs come (the targets' order)."""
    names = order or list(dict.fromkeys(r.flat.get("logging.arm") for r in runs))
    arms = {name: Arm(name, {}) for name in names}
    for run in runs:
        arms[run.flat.get("logging.arm")].runs.append(run)
    return [a for a in arms.values() if a.runs or a.excluded]


def _relevant(flat: dict[str, Any]) -> dict[str, str]:
    return {k: _value_text(v) for k, v in flat.items() if not k.startswith(NOT_RESULT_KEYS)}


def differing_keys(arms: list[Arm], defining: set[str]) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, Any]]]:
    """(keys that vary within an arm: {key: {arm: values}}, keys that differ between arms only).

    `defining` are the keys expected to differ (the `--by` keys or the arms' overrides).
    """
    per_arm: dict[str, dict[str, set[str]]] = {}
    raw: dict[str, dict[str, Any]] = {}
    for arm in arms:
        for run in arm.runs:
            for key, text in _relevant(run.flat).items():
                per_arm.setdefault(key, {}).setdefault(arm.name, set()).add(text)
                raw.setdefault(key, {})[arm.name] = run.flat.get(key)
    n_arms = len([a for a in arms if a.runs])
    within, between = {}, {}
    for key, by_arm in per_arm.items():
        if key in defining:
            continue
        mixed = {a: sorted(v) for a, v in by_arm.items() if len(v) > 1}
        if mixed:
            within[key] = mixed
        elif len({next(iter(v)) for v in by_arm.values()}) > 1 or len(by_arm) < n_arms:
            between[key] = raw[key]
    return within, between


def check_pooling(arms: list[Arm], defining: set[str]) -> dict[str, dict[str, Any]]:
    """Raise when an arm would pool runs with different settings; return the confounders."""
    within, between = differing_keys(arms, defining)
    if within:
        lines = [f"{key}: " + "; ".join(f"arm {a}: {', '.join(v)}" for a, v in by_arm.items())
                 for key, by_arm in sorted(within.items())]
        raise UserError("runs of one arm differ in settings that change results, so they cannot be pooled:\n  "
                        + "\n  ".join(lines) + "\nadd --by KEY for each key (one arm per value), or compare "
                        "fewer run folders")
    return between | check_provenance(arms)


def code_version(run: Run) -> str:
    code = run.provenance.get("code") or {}
    if not code:
        return "not recorded"
    commit = (code.get("git_commit") or "no git")[:10] + ("+dirty" if code.get("git_dirty") else "")
    return f"{code.get('tiframework')} @ {commit}"


def check_provenance(arms: list[Arm]) -> dict[str, dict[str, Any]]:
    """Refuse an arm whose runs trained on different data (dataset content hash); when the arms
    ran different code, warn and return it as a confounder (`{"code version": {arm: versions}}`)."""
    for arm in arms:
        hashes = {str(run.path): (run.provenance.get("dataset") or {}).get("hash") for run in arm.runs}
        if len(set(hashes.values()) - {None}) > 1:
            shown = "; ".join(f"{path}: {h}" for path, h in hashes.items() if h)
            raise UserError(f"arm {arm.name}: its runs trained on different data (dataset hashes differ: {shown}), "
                            "so they cannot be pooled; compare runs of one dataset, or make the data an arm")
    versions = {arm.name: ", ".join(sorted({code_version(run) for run in arm.runs})) for arm in arms if arm.runs}
    if len(set(versions.values())) > 1:
        log.warning("the arms ran different code (%s): a difference may come from the code, not the settings",
                    "; ".join(f"{a}: {v}" for a, v in versions.items()))
        return {"code version": versions}
    return {}
