"""Weights & Biases for one run (offline unless configured): a passive sink.

The tracker receives what training and evaluation produce (scalars, eval rows, preview
images, the summary, the final embedding) and never computes any of it. The run folder
(`tracking.runfolder`) always gets the same numbers, so nothing depends on the cloud.
W&B runs are finished in `close()`, which `train()` calls from a `finally`, also when
training raises.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

import wandb
from pytorch_lightning.loggers import WandbLogger

from tiframework.config import ExperimentConfig

log = logging.getLogger(__name__)

OFFLINE_MODES = ("offline", "dryrun")
# Summary keys that W&B's run table and grouped charts show as `eval/<key>`.
SUMMARY_KEYS = ("best_step", "best_score", "best_score_selection", "baseline_score", "final_score",
                "plateau_step", "plateau_reason", "plateau_noise")


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


def run_tags(cfg: ExperimentConfig) -> list[str]:
    """Tags that let dashboards group runs by the settings users compare."""
    return [*cfg.logging.wandb_tags, f"vpt={cfg.embedding.vectors_per_token}",
            f"lr={cfg.training.learning_rate}", f"accum={cfg.training.accumulate}",
            f"data={Path(cfg.data.path or '').name or cfg.data.path}"]


class Tracker:
    """One run's W&B logger; `logger` is handed to Lightning for the per-step scalars."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self.logger: WandbLogger | None = self._make_logger() if cfg.logging.wandb else None

    def _make_logger(self) -> WandbLogger | None:
        c = self.cfg.logging
        mode = wandb_mode()
        if mode == "disabled":
            return None
        project = c.wandb_project or os.environ.get("WANDB_PROJECT") or "tiframework"
        logger = WandbLogger(
            project=project, name=f"{c.experiment}/{self.run_dir.name}", save_dir=str(self.run_dir),
            group=c.wandb_group or c.experiment, tags=run_tags(self.cfg), job_type=c.wandb_job_type,
            config=self.cfg.model_dump(mode="json"), mode=mode, offline=mode in OFFLINE_MODES,
        )
        logger._wandb_init.pop("anonymous", None)  # Lightning always passes it; W&B warns on every run
        run = logger.experiment  # start the run now, so its folder exists even if training fails early
        if mode in OFFLINE_MODES:  # "dryrun" is W&B's old name for offline: there is no URL
            folder = Path(run.dir).parent
            log.info("W&B offline run: %s (upload it later with: wandb sync %s)", folder, folder)
        else:
            log.info("W&B run: %s", run.url)
        return logger

    def log_previews(self, step: int, prompts: list[str], images: list[list[Any]]) -> None:
        if self.logger is None:
            return
        shown = [wandb.Image(img, caption=f"{p} (seed {i})") for p, row in zip(prompts, images, strict=True)
                 for i, img in enumerate(row)]
        self.logger.experiment.log({"preview/images": shown, "train/step": step})

    def log_eval(self, row: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.log_metrics({k: v for k, v in row.items() if k != "step"} | {"train/step": row["step"]})

    def finish(self, summary: dict[str, Any], embedding: Path) -> None:
        """The run's summary numbers and its final embedding, as an Artifact."""
        if self.logger is None:
            return
        run = self.logger.experiment
        for key in SUMMARY_KEYS:
            if summary.get(key) is not None:
                run.summary[f"eval/{key}"] = summary[key]
        artifact = wandb.Artifact(name=f"{self.cfg.embedding.name}-embedding", type="embedding",
                                  metadata={k: summary.get(k) for k in SUMMARY_KEYS})
        artifact.add_file(str(embedding))
        run.log_artifact(artifact)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.experiment.finish()
            if wandb.run is not None:
                wandb.finish()
            self.logger = None
