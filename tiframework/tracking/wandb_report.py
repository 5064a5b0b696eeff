"""Weights & Biases without Lightning: which mode runs use, and a report as its own W&B run
(e.g. `tiframework compare`'s verdicts and plots) in the same group as the runs it reports
on. Apart from `tracker` so that a report does not import Lightning and torch to log a table.
"""

from __future__ import annotations

import logging
import netrc
import os
import re
from pathlib import Path
from typing import Any

import wandb

log = logging.getLogger(__name__)
OFFLINE_MODES = ("offline", "dryrun")  # "dryrun" is W&B's old name for offline: there is no URL


def wandb_mode() -> str:
    """`WANDB_MODE` if set; online when an API key is configured; offline otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def log_report(*, project: str | None, group: str, name: str, job_type: str, config: dict[str, Any],
               tables: dict[str, tuple[list[str], list[list[Any]]]], plots: dict[str, Any],
               summary: dict[str, Any], files: list[Path], save_dir: Path,
               images: dict[str, list[tuple[Path, str]]] | None = None) -> Path | None:
    """A report (e.g. `compare`'s verdicts and plots) as its own W&B run in the runs' group.

    Offline unless W&B is configured, like training runs; finished even when logging raises.
    `plots` are plotly figures; `images`: key -> (image file, caption) pairs; `files` go into one
    Artifact. Returns the run's folder.
    """
    mode = wandb_mode()
    if mode == "disabled":
        return None
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project or os.environ.get("WANDB_PROJECT") or "tiframework", group=group,
                     name=name, job_type=job_type, config=config, dir=str(save_dir), mode=mode)
    try:
        run.log({key: wandb.Table(columns=cols, data=rows) for key, (cols, rows) in tables.items()}
                | {key: wandb.Plotly(fig) for key, fig in plots.items()}
                | {key: [wandb.Image(str(path), caption=caption) for path, caption in pairs]
                   for key, pairs in (images or {}).items()})
        for key, value in summary.items():
            run.summary[key] = value
        artifact = wandb.Artifact(name=re.sub(r"[^\w.-]", "-", f"{group}-{job_type}"), type=job_type)
        for file in files:
            artifact.add_file(str(file))
        run.log_artifact(artifact)
        folder = Path(run.dir).parent
        if mode in OFFLINE_MODES:
            log.info("W&B offline %s run: %s (upload it later with: wandb sync %s)", job_type, folder, folder)
        else:
            log.info("W&B %s run: %s", job_type, run.url)
    finally:
        run.finish()
    return folder
