"""The checks of a training config that need neither the model nor torch.

`tiframework train` runs them before it imports the training stack (torch, diffusers,
Lightning: seconds of imports), so a refused input costs well under a second; `train()`
runs them again, for callers that skip the CLI (sweeps, tests). Nothing here writes a file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tiframework.config import ExperimentConfig
from tiframework.data.templates import read_templates
from tiframework.errors import UserError
from tiframework.sd.names import check_name_text
from tiframework.toyworld.characters import is_spec, parse_spec
from tiframework.tracking.runfolder import RunFolder, check_run_target
from tiframework.training.schedules import training_steps

log = logging.getLogger(__name__)
# Presets whose weights are random: they prove the plumbing runs, and nothing they learn means anything.
RANDOM_PRESETS = ("tiny", "sd15-random")


def resume_file(cfg: ExperimentConfig) -> Path:
    """`resume=` as a file: an embedding file, or a run folder's latest checkpoint."""
    path = Path(cfg.resume or "").expanduser()
    if path.is_dir() and (path / "config.yaml").is_file():
        return RunFolder(path).latest_checkpoint(cfg.embedding.name)
    return path


def resumed_folder(cfg: ExperimentConfig) -> Path | None:
    """The run folder a resume continues in (its file's own), or None for a new folder."""
    own = RunFolder.owning(resume_file(cfg)) if cfg.resume else None
    wanted = RunFolder.requested(cfg)
    return None if own is None or (wanted is not None and wanted != own) else own


def model_line(cfg: ExperimentConfig) -> str:
    """The first thing a run logs: which model it trains through, and whether it means anything."""
    if cfg.model.path:
        return f"model: {cfg.model.path}"
    if cfg.model.preset in RANDOM_PRESETS:
        return (f"model: preset {cfg.model.preset!r}, RANDOM weights: this run tests the plumbing, its "
                "embedding means nothing (train a real one with model.path=<SD 1.x checkpoint>)")
    return f"model: preset {cfg.model.preset!r}"


def preflight(cfg: ExperimentConfig, fresh: bool = False) -> None:
    """Refuse a config that cannot train, before any model loads or folder is made."""
    if not cfg.data.path:
        raise UserError("data.path: no dataset given; set data.path to a folder of images with .txt captions")
    read_templates(cfg.data)
    check_name_text(cfg.embedding.name, "embedding.name")  # the vocabulary check needs the model: later
    training_steps(cfg.training)  # a bad schedule string is refused here
    if is_spec(cfg.data.path):
        parse_spec(cfg.data.path)
    elif not Path(cfg.data.path).expanduser().is_dir():
        raise UserError(f"{cfg.data.path}: data.path folder not found; fix data.path")
    if cfg.model.path and not Path(cfg.model.path).expanduser().exists():
        raise UserError(f"{cfg.model.path}: model not found; fix model.path (a diffusers folder, "
                        ".safetensors or .ckpt)")
    check_run_target(cfg, resumed_folder(cfg), fresh)
