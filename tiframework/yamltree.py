"""YAML files and dotted `key=value` overrides as nested dicts.

The plain-data half of configuration, shared by experiment configs (`tiframework.config`)
and sweep files (`tiframework.sweeps.schema`): read a file's mapping with an error that
names the file, merge trees, and turn `training.max_steps=20` into a nested dict.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tiframework.errors import UserError


def read_yaml_mapping(path: Path, what: str, not_mapping: str) -> dict[str, Any]:
    """A YAML file's top-level mapping; UserError naming the file if missing, invalid or not a mapping."""
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}{_where(exc)}: not valid YAML ({_problem(exc)}); fix the syntax there") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: {not_mapping}")
    return data


def _where(exc: yaml.YAMLError) -> str:
    """`:line:column` (1-based, as editors count) of a YAML error, when PyYAML knows it."""
    mark = getattr(exc, "problem_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def _problem(exc: yaml.YAMLError) -> str:
    # Only the first line: PyYAML's own text quotes the file over several lines.
    return " ".join(str(getattr(exc, "problem", None) or exc.__class__.__name__).split())


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


_OVERRIDE = re.compile(r"^([A-Za-z_][\w.]*)=(.*)$", re.S)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """`set_dotted(d, "training.max_steps", 20)` sets d["training"]["max_steps"]."""
    node = tree
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"override {key!r}: {p} is not a section")
    node[leaf] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["training.max_steps=20", "resume=x.pt"]` -> nested dict with YAML-parsed values."""
    out: dict[str, Any] = {}
    for item in items:
        m = _OVERRIDE.match(item)
        if not m:
            raise UserError(f"override {item!r}: expected key=value, e.g. training.max_steps=20")
        key, raw = m.groups()
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and "\n" in raw.strip():
            value = raw  # YAML folds a line break into a space: a name with a newline would hide it
        set_dotted(out, key, value)
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"training": {"max_steps": 20}}` -> `{"training.max_steps": 20}` (the inverse of `set_dotted`)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
