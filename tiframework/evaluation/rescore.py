"""`tiframework eval RUN`: score every saved checkpoint of a finished run, afterwards.

The step-0 baseline is the run's own starting embedding (`sd.embeddings.create` from its
config, as training starts), so gains read the same as in training-time evaluation. Results
are never destroyed: the eval.csv, eval_per_image.csv, summary.json and eval images it
replaces are kept in the run's `history/`, and the new summary says which eval settings
made the new table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tiframework.config import load_config
from tiframework.errors import UserError
from tiframework.evaluation.evaluator import make_evaluator
from tiframework.evaluation.evidence import save_eval_images
from tiframework.evaluation.summary import append_row, eval_settings, samples_by_step, summarize
from tiframework.sd.embeddings import create, load_embedding
from tiframework.sd.models import load_model
from tiframework.sd.runtime import DTYPES, detect_machine, resolve_dtype, resolve_precision
from tiframework.tracking.runfolder import RunFolder

log = logging.getLogger(__name__)


def evaluate_run(run_dir: Path, reference: str | None = None, overrides: list[str] | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Score every saved checkpoint of a finished run (plus the step-0 baseline) into eval.csv."""
    folder = RunFolder(run_dir)
    if not folder.config_file.is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml); give runs/<experiment>/<run-id>")
    cfg = load_config(folder.config_file, overrides, file_relative=False)  # paths as the run used them
    found: list[tuple[int, Path | torch.Tensor]] = list(folder.checkpoints(cfg.embedding.name))
    if not found:
        raise UserError(f"{folder.embeddings}: no {cfg.embedding.name}-<step>.pt checkpoints to score")
    parts = load_model(cfg.model)
    machine = detect_machine("cpu" if cfg.training.device == "cpu" else "auto")
    weights = resolve_dtype(cfg.model.dtype, machine, resolve_precision(cfg.training.precision, machine))
    parts.to(machine.device, DTYPES[weights])  # as training runs them (half precision on a GPU)
    device = machine.device
    evaluator = make_evaluator(cfg, parts, reference=reference, device=device)
    if found[0][0] != 0:
        found.insert(0, (0, create(cfg.embedding, parts, seed=cfg.training.seed).vectors))
    kept = folder.keep_copies("before-eval", folder.eval_file, folder.per_image_file, folder.summary_file,
                              folder.eval_images)
    if kept is not None:
        log.info("the earlier evaluation (eval.csv, summary.json, eval images) is kept in %s", kept)
    rows: list[dict[str, float]] = []
    per_image: list[dict[str, Any]] = []
    for step, source in tqdm(found, desc="scoring checkpoints", unit="ckpt", disable=not progress):
        vectors = source if isinstance(source, torch.Tensor) else load_embedding(source, parts.width).vectors
        append_row(rows, evaluator.score(vectors, step))
        per_image += evaluator.last_per_image
        save_eval_images(evaluator.last_images, folder.eval_images, step)
    folder.write_eval(rows)
    folder.write_per_image(per_image)
    summary = folder.read_summary() or {"run_dir": str(run_dir)}
    summary.update(summarize(rows, evaluator.eval_cfg, samples=samples_by_step(per_image)))
    summary["eval_settings"] = eval_settings(evaluator.eval_cfg, "tiframework eval")
    folder.write_summary(summary)
    return summary
