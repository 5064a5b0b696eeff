"""Prompt templates (`[name]`, `[filewords]`): read and checked without torch, so a bad
template is refused before the training stack is even imported."""

from __future__ import annotations

from pathlib import Path

from tiframework.config import DataConfig
from tiframework.errors import UserError

DEFAULT_TEMPLATE = "[filewords], [name]"


def read_templates(cfg: DataConfig) -> list[str]:
    if cfg.template_file:
        path = Path(cfg.template_file)
        if not path.is_file():
            raise UserError(f"{path}: template file not found; fix data.template_file")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        source = str(path)
    else:
        lines, source = [t.strip() for t in cfg.templates if t.strip()], "data.templates"
    if not lines:
        raise UserError(f"{source}: no templates; use e.g. '{DEFAULT_TEMPLATE}'")
    for line in lines:
        if "[name]" not in line:
            raise UserError(
                f"{source}: template {line!r} has no [name], so the embedding would never be trained; "
                f"add [name], e.g. '{DEFAULT_TEMPLATE}'"
            )
    return lines
