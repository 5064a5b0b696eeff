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
        self.eval_callback = None
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

    def log_row(self, row: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.log_metrics({k: v for k, v in row.items() if k != "step"} | {"train/step": row["step"]})

    def callbacks(self, progress, evaluator=None, on_eval=None) -> list:
        """The evaluation callback for this run, when there is an evaluator."""
        if evaluator is None:
            return []
        from tiframework.scoring import EvalCallback

        def log_row(row: dict[str, float]) -> None:
            self.log_row(row)
            if on_eval is not None:
                on_eval(row)

        self.eval_callback = EvalCallback(evaluator, self.run_dir, log_row, progress)
        return [self.eval_callback]

    def summary(self) -> dict[str, Any]:
        """Best and plateau steps of CLIP fidelity, plus the diagnostics' warnings."""
        if self.eval_callback is None:
            return {}
        from tiframework.scoring import summarize

        out = summarize(self.eval_callback.rows, self.cfg)
        out["warnings"] = list(self.eval_callback.warnings)
        if self.eval_callback.stop_reason:
            out["stopped"] = self.eval_callback.stop_reason
        return out

    # --- the end of a run -----------------------------------------------------------------

    def finish_ok(self, embedding: Path) -> None:
        if self.logger is None:
            return
        import wandb

        summary = self.summary()
        run = self.logger.experiment
        for key in ("best_step", "best_score", "plateau_step"):
            if summary.get(key) is not None:
                run.summary[f"eval/{key}"] = summary[key]
        artifact = wandb.Artifact(name=f"{self.cfg.embedding.name}-embedding", type="embedding",
                                  metadata={k: summary.get(k) for k in ("best_step", "best_score", "plateau_step")})
        artifact.add_file(str(embedding))
        run.log_artifact(artifact)

    def close(self) -> None:
        if self.logger is not None:
            import wandb

            self.logger.experiment.finish()
            if wandb.run is not None:
                wandb.finish()
            self.logger = None
