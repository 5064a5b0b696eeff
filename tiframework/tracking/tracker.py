"""Weights & Biases for one run (offline unless configured): a passive sink.

The tracker receives what training and evaluation produce (scalars, eval rows, preview
images, the summary, the final embedding) and never computes any of it. The run folder
(`tracking.runfolder`) always gets the same numbers, so nothing depends on the cloud.
W&B runs are finished in `close()`, which `train()` calls from a `finally`, also when
training raises. Each tracker has its own W&B run, so a population's members can log side
by side in one process.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import wandb
from pytorch_lightning.loggers import WandbLogger

from tiframework.config import ExperimentConfig
from tiframework.tracking.wandb_report import OFFLINE_MODES, wandb_mode

log = logging.getLogger(__name__)

# Summary keys (the run folder's summary.json names) that W&B's run table and grouped charts
# show as `eval/<key>`: the held-out score of the checkpoint chosen on the selection seeds,
# the last evaluation's, the step-0 baseline, and the plateau.
SUMMARY_KEYS = ("best_step", "best_score", "best_score_selection", "baseline_score", "final_step", "final_score",
                "plateau_step", "plateau_reason", "plateau_noise")
# Logged with these prefixes, a value is plotted against the optimizer step it was measured
# at (`train/step`), not W&B's own row counter or Lightning's `trainer/global_step`.
STEP_METRIC = "train/step"
# Training scalars too: a solo run logs them through Lightning, whose own counter need not be a
# population member's, so step 1 sits at train/step 1 in both.
BY_OPTIMIZER_STEP = ("train/", "eval/", "select/", "preview/", "val/", "vectors/")
TRAIN_SCALARS = ("train/loss", "train/lr", "train/vector_norm")  # each step's, solo and member alike


def run_name(cfg: ExperimentConfig, run_dir: Path) -> str:
    """`<experiment>/<run id>`; a sweep's arm runs read `<study>/<arm>/seed-<s>`."""
    return f"{cfg.logging.experiment}/{cfg.logging.run_id or run_dir.name}"


def run_config(cfg: ExperimentConfig, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full config, plus top-level `seed` (and `arm`) so dashboards can group by them, and the
    run's provenance (code version, packages, data and model hashes) under `provenance`."""
    out = cfg.model_dump(mode="json") | {"seed": cfg.training.seed}
    if provenance is not None:
        out["provenance"] = provenance
    if cfg.logging.arm is not None:
        out["arm"] = cfg.logging.arm
    return out


def run_tags(cfg: ExperimentConfig) -> list[str]:
    """Tags that let dashboards group runs by the settings users compare."""
    return [*cfg.logging.wandb_tags, f"vpt={cfg.embedding.vectors_per_token}",
            f"lr={cfg.training.learning_rate}", f"accum={cfg.training.accumulate}",
            f"data={Path(cfg.data.path or '').name or cfg.data.path}"]


class Tracker:
    """One run's W&B logger; `logger` is handed to Lightning for the per-step scalars."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, provenance: dict[str, Any] | None = None):
        self.cfg, self.run_dir, self.provenance = cfg, run_dir, provenance
        self._by_step: set[str] = set()
        self.logger: WandbLogger | None = self._make_logger() if cfg.logging.wandb else None

    def _make_logger(self) -> WandbLogger | None:
        c = self.cfg.logging
        mode = wandb_mode()
        if mode == "disabled":
            return None
        project = c.wandb_project or os.environ.get("WANDB_PROJECT") or "tiframework"
        logger = WandbLogger(
            project=project, name=run_name(self.cfg, self.run_dir), save_dir=str(self.run_dir),
            group=c.wandb_group or c.experiment, tags=run_tags(self.cfg), job_type=c.wandb_job_type,
            config=run_config(self.cfg, self.provenance), mode=mode, offline=mode in OFFLINE_MODES,
        )
        logger._wandb_init.pop("anonymous", None)  # Lightning always passes it; W&B warns on every run
        # Started here, not by Lightning: its logger would reuse a run already in progress,
        # and a population keeps one run per member open at once. Started now, so its
        # folder exists even if training fails early.
        run = wandb.init(**logger._wandb_init, reinit="create_new")
        run.define_metric("trainer/global_step")  # Lightning's x-axis, as its logger defines it
        run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        logger._experiment = run
        run.define_metric(STEP_METRIC)
        for key in TRAIN_SCALARS:
            run.define_metric(key, step_metric=STEP_METRIC)
            self._by_step.add(key)
        if mode in OFFLINE_MODES:
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
        self._define_step_axis(["preview/images"])
        self.logger.experiment.log({"preview/images": shown, STEP_METRIC: step})

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        """One optimizer step's scalars, where Lightning does not log them (a population member)."""
        if self.logger is not None:
            self._define_step_axis(list(metrics))
            self.logger.log_metrics(metrics | {STEP_METRIC: float(step)}, step=step)

    def log_eval(self, row: dict[str, float]) -> None:
        if self.logger is not None:
            values = {k: v for k, v in row.items() if k != "step"}
            self._define_step_axis(list(values))
            self.logger.log_metrics(values | {STEP_METRIC: row["step"]})

    def _define_step_axis(self, keys: list[str]) -> None:
        """Plot these metrics against `train/step`. Named one by one: Lightning's logger defines
        the glob `*` against `trainer/global_step`, and an exact name wins over any glob."""
        run = self.logger.experiment if self.logger is not None else None
        for key in keys:
            if (run is not None and key != STEP_METRIC and key.startswith(BY_OPTIMIZER_STEP)
                    and key not in self._by_step):
                run.define_metric(key, step_metric=STEP_METRIC)
                self._by_step.add(key)

    def finish(self, summary: dict[str, Any], embedding: Path) -> None:
        """The run's summary numbers, every metric at the chosen checkpoint (`chosen/<metric>`),
        and its final embedding, as an Artifact."""
        if self.logger is None:
            return
        run = self.logger.experiment
        for key in SUMMARY_KEYS:
            if summary.get(key) is not None:
                run.summary[f"eval/{key}"] = summary[key]
        for key, value in (summary.get("chosen_metrics") or {}).items():
            if value is not None:
                run.summary[f"chosen/{key}"] = value
        artifact = wandb.Artifact(name=f"{self.cfg.embedding.name}-embedding", type="embedding",
                                  metadata={k: summary.get(k) for k in SUMMARY_KEYS})
        artifact.add_file(str(embedding))
        run.log_artifact(artifact)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.experiment.finish()  # this run only: a population's other members' stay open
            self.logger = None

