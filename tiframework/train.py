"""`train(cfg)`: one textual-inversion run, start to finish. The CLI, sweeps and tests call it.

It returns the run summary (also written to `summary.json`), so callers get metrics
without parsing files.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from tiframework.config import ExperimentConfig, save_config
from tiframework.errors import UserError
from tiframework.fileio import atomic_write_text
from tiframework.models import SDParts

log = logging.getLogger(__name__)


def resolve_data_path(spec: str, what: str) -> Path:
    """A folder path, or `toyworld:<character>...`, a generated toy-world dataset."""
    from tiframework.toyworld import is_spec, resolve_dataset_path

    if is_spec(spec):
        return resolve_dataset_path(spec)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise UserError(f"{spec}: {what} folder not found; fix {what}")
    return path


def make_run_dir(cfg: ExperimentConfig) -> Path:
    experiment = cfg.logging.experiment or "default"
    root = Path(cfg.logging.runs_dir) / experiment
    if cfg.logging.run_id:
        run = root / cfg.logging.run_id
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run, n = root / stamp, 1
        while run.exists():
            run, n = root / f"{stamp}-{n}", n + 1
    for sub in ("embeddings", "previews"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    return run


@dataclass
class Start:
    vectors: torch.Tensor  # (VPT, width)
    step: int
    optimizer_state: dict | None


def starting_point(cfg: ExperimentConfig, parts: SDParts, data_dir: Path) -> Start:
    """A new embedding from the init text, or the stored one when resuming."""
    from tiframework.embeddings import create, load_embedding

    e = cfg.embedding
    if not cfg.resume:
        emb = create(e.name, e.init_text, e.vectors_per_token, parts, dataset_dir=data_dir)
        return Start(emb.vectors, 0, None)
    path = Path(cfg.resume)
    emb = load_embedding(path, expected_width=parts.width)
    if emb.n_vectors != e.vectors_per_token:
        raise UserError(f"{path}: has {emb.n_vectors} vectors but embedding.vectors_per_token is "
                        f"{e.vectors_per_token}; set embedding.vectors_per_token={emb.n_vectors}")
    optim_path = path.with_name(path.name + ".optim")
    state = None
    if optim_path.is_file():
        state = torch.load(optim_path, map_location="cpu", weights_only=True).get("optimizer_state_dict")
    else:
        log.warning("%s: no optimizer state beside the embedding; AdamW restarts from zero moments", path)
    return Start(emb.vectors, emb.step, state)


def _precision(cfg: ExperimentConfig, accelerator: str) -> str:
    if accelerator != "gpu":
        return "32-true"
    p = cfg.training.precision
    if p == "auto":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return {"32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}[p]


def _accelerator(cfg: ExperimentConfig) -> str:
    device = cfg.training.device
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device: cuda was asked for but no GPU is visible; use training.device=auto")
    return "gpu" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def default_preview_prompts(cfg: ExperimentConfig, captions: list[str | None]) -> list[str]:
    if cfg.preview.prompts:
        return list(cfg.preview.prompts)
    first = next((c for c in captions if c), None)
    return ["[name]"] + ([f"{first}, [name]"] if first else [])


def make_evaluator(cfg: ExperimentConfig, parts: SDParts, reference: str | None = None):
    """The run's evaluator, with the toy world's attribute accuracy when the reference art
    (or else the data) is a toy character: a pruned variant of a toy dataset is a plain
    folder, but its `eval.reference: toyworld:<character>:reference` still names her."""
    from tiframework.scoring import Evaluator
    from tiframework.toyworld import is_spec

    extra = []
    spec = next((s for s in (reference or cfg.eval.reference, cfg.data.path) if s and is_spec(s)), None)
    if spec:
        from tiframework.scoring import toyworld_attribute_scorer

        extra.append(toyworld_attribute_scorer(spec))
    return Evaluator(cfg, parts, reference=reference, extra=extra)


def train(cfg: ExperimentConfig, *, parts: SDParts | None = None, extra_callbacks: list | None = None,
          run_dir: Path | None = None, on_eval: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train one embedding as `cfg` says; return the summary written to `summary.json`.

    `parts`: already-loaded frozen parts to reuse (a sweep worker loads them once).
    `on_eval`: called with each evaluation row (`{"step": ..., "eval/clip_fidelity": ...}`)
    right after it is written; an exception it raises (e.g. `optuna.TrialPruned`) ends
    the run, with the W&B run still finished.
    """
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from tiframework import callbacks as cb
    from tiframework.data import (
        CaptionedLatents,
        StreamSampler,
        collate,
        encode_latents,
        read_templates,
        scan_folder,
    )
    from tiframework.models import load_model
    from tiframework.module import TextualInversionModule
    from tiframework.schedules import parse_schedule, total_steps
    from tiframework.tracking import Tracker

    if not cfg.data.path:
        raise UserError("data.path: no dataset given; set data.path to a folder of images with .txt captions")
    templates = read_templates(cfg.data)
    schedule = parse_schedule(cfg.training.learning_rate)
    data_dir = resolve_data_path(cfg.data.path, "data.path")
    parts = parts or load_model(cfg.model)
    evaluator = make_evaluator(cfg, parts) if cfg.eval.every else None
    start = starting_point(cfg, parts, data_dir)
    total = total_steps(schedule, cfg.training.max_steps)
    if start.step >= total:
        raise UserError(f"{cfg.resume}: already at step {start.step}, and training ends at step {total}; "
                        "raise training.max_steps or extend training.learning_rate")
    accelerator = _accelerator(cfg)
    items, _ = scan_folder(data_dir, cfg.data.max_side, cfg.data.bucket_step or parts.bucket_step)

    run = run_dir or make_run_dir(cfg)
    save_config(cfg, run / "config.yaml")
    tracker = Tracker(cfg, run)
    try:
        if accelerator == "gpu":
            parts.vae.to("cuda")
        means, stds = encode_latents(items, parts.vae, cfg.data.cache_dir, progress=cfg.logging.progress_bar)
        dataset = CaptionedLatents(items, means, stds, cfg.data, templates, cfg.embedding.name, cfg.training.seed)
        t = cfg.training
        remaining = total - start.step
        sampler = StreamSampler([it.size for it in items], t.batch_size, t.seed,
                                start=start.step * t.accumulate, length=remaining * t.accumulate)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers)
        module = TextualInversionModule(cfg, parts, start.vectors, start.step, start.optimizer_state)

        saver = cb.EmbeddingSaver(run / "embeddings", t.save_every, parts.checkpoint_hash, parts.checkpoint_name)
        progress = cb.StepProgress(total, start.step)
        callbacks = [cb.MetricsCSV(run / "metrics.csv"), saver]
        if cfg.preview.every:
            prompts = default_preview_prompts(cfg, [it.caption for it in items])
            callbacks.append(cb.PreviewWriter(run / "previews", cfg.preview.every, prompts, hook=tracker.log_previews))
        callbacks += tracker.callbacks(progress, evaluator, on_eval) + (extra_callbacks or [])
        if cfg.logging.progress_bar:
            callbacks.append(progress)

        precision = _precision(cfg, accelerator)
        # Lightning's own INFO lines (GPU/TPU availability, an ad for its cloud logger) say less than ours.
        logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
        trainer = pl.Trainer(
            accelerator=accelerator, devices=1, precision=precision,
            max_steps=remaining, max_epochs=1, accumulate_grad_batches=t.accumulate,
            gradient_clip_val=None if t.grad_clip == "none" else t.grad_clip_value,
            gradient_clip_algorithm=None if t.grad_clip == "none" else t.grad_clip,
            logger=tracker.logger or False, callbacks=callbacks, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
            num_sanity_val_steps=0, limit_val_batches=0, deterministic=False,
        )
        torch.manual_seed(t.seed)
        log.info("training %s on %s (%s), %d steps", cfg.embedding.name, accelerator, precision,
                 remaining)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LightningModule.*has parameters that were not.*")
            trainer.fit(module, train_dataloaders=loader)

        # A skipped non-finite step still advances Lightning's counter; the vectors did not move.
        final_step = module.step if module.nonfinite_step is None else module.nonfinite_step
        name = cfg.embedding.name
        if not saver.saved or saver.saved[-1].stem != f"{name}-{final_step}":
            saver.save(module, final_step, f"{name}-{final_step}")
        final = saver.save(module, final_step, name)
        summary = {
            "run_dir": str(run), "embedding": str(final), "final_step": final_step,
            "final_loss": module.last_loss, "vector_norms": module.vector_norms(),
            "stopped": None,
        }
        summary.update(tracker.summary())
        if module.nonfinite_step is not None:
            summary["stopped"] = f"non-finite loss at step {module.nonfinite_step}"
            log.error("training stopped at step %d: the loss became NaN/Inf. The last good embedding is %s",
                      module.nonfinite_step, final)
        tracker.finish_ok(final)
        atomic_write_text(run / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary
    finally:
        tracker.close()
