"""Run tracking: Weights & Biases (offline unless configured) beside the local run folder.

The local folder always gets the same numbers (`metrics.csv`, `eval.csv`,
`summary.json`), so nothing depends on the cloud. W&B runs are finished in `close()`,
which `train()` calls from a `finally`, also when training raises.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from tiframework.config import ExperimentConfig

log = logging.getLogger(__name__)


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
    """One run's W&B logger plus the evaluation history that feeds `summary.json`."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self.logger = None
        self.history: list[dict[str, float]] = []  # eval rows: {"step": ..., "eval/clip_fidelity": ...}
        self.baseline: dict[str, float] | None = None
        if cfg.logging.wandb:
            self.logger = self._make_logger()

    def _make_logger(self):
        from pytorch_lightning.loggers import WandbLogger

        c = self.cfg.logging
        mode = wandb_mode()
        if mode == "disabled":
            return None
        project = c.wandb_project or os.environ.get("WANDB_PROJECT") or "tiframework"
        logger = WandbLogger(
            project=project, name=f"{c.experiment}/{self.run_dir.name}", save_dir=str(self.run_dir),
            group=c.wandb_group or c.experiment, tags=run_tags(self.cfg), job_type=c.wandb_job_type,
            config=self.cfg.model_dump(mode="json"), mode=mode, offline=mode == "offline",
        )
        _ = logger.experiment  # start the run now, so its folder exists even if training fails early
        log.info("W&B run (%s): %s", mode, logger.experiment.dir if mode == "offline" else logger.experiment.url)
        return logger

    # --- hooks used during training -------------------------------------------------------

    def log_previews(self, step: int, prompts: list[str], images: list[list[Any]]) -> None:
        if self.logger is None:
            return
        import wandb

        shown = [wandb.Image(img, caption=f"{p} (seed {i})") for p, row in zip(prompts, images, strict=True)
                 for i, img in enumerate(row)]
        self.logger.experiment.log({"preview/images": shown, "train/step": step})

    def callbacks(self, progress) -> list:
        """Evaluation callbacks for this run (empty when `eval.every` is 0)."""
        return []

    def summary(self) -> dict[str, Any]:
        return {}

    # --- the end of a run -----------------------------------------------------------------

    def finish_ok(self, embedding: Path) -> None:
        if self.logger is None:
            return
        import wandb

        artifact = wandb.Artifact(name=f"{self.cfg.embedding.name}-embedding", type="embedding",
                                  metadata={"step": self.summary().get("best_step")})
        artifact.add_file(str(embedding))
        self.logger.experiment.log_artifact(artifact)

    def close(self) -> None:
        if self.logger is not None:
            import wandb

            self.logger.experiment.finish()
            if wandb.run is not None:
                wandb.finish()
            self.logger = None
