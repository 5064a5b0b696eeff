"""`train(cfg)`: one textual-inversion run, start to finish. The CLI, sweeps and tests call it.

It returns the run summary (also written to `summary.json`), so callers get metrics
without parsing files. The pieces: `starting_point` (new or resumed vectors), `_callbacks`
(what the run writes and watches), `_trainer` (Lightning), `_finish` (final saves, summary).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tiframework.config import ExperimentConfig
from tiframework.data.dataset import CaptionedLatents, Item, StreamSampler, collate, scan_folder
from tiframework.data.latents import Latents, encode_latents
from tiframework.data.masks import item_masks
from tiframework.data.sources import resolve_data_path
from tiframework.data.templates import read_templates
from tiframework.errors import RunInterrupted, UserError
from tiframework.evaluation.evaluator import make_evaluator
from tiframework.evaluation.summary import eval_settings
from tiframework.sd.embeddings import check_name, create, load_embedding
from tiframework.sd.models import TOYWORLD_DIR, SDParts, load_model
from tiframework.sd.optimizer_state import load_training_state
from tiframework.sd.runtime import Runtime, detect_machine, resolve_runtime
from tiframework.tracking import provenance
from tiframework.tracking.runfolder import RunFolder
from tiframework.tracking.tracker import Tracker
from tiframework.training import callbacks as cb
from tiframework.training.interrupt import INTERRUPTED, StopOnSignal, interrupted_message
from tiframework.training.module import TextualInversionModule
from tiframework.training.preflight import model_line, preflight, resume_file
from tiframework.training.previews import rebuild_strips
from tiframework.training.run_eval import RunEvaluation
from tiframework.training.schedules import a1111_extra_step, parse_schedule, training_steps
from tiframework.training.validation import (
    ValidationCallback,
    ValidationRecord,
    ValidationSet,
    training_and_held_out,
)
from tiframework.training.vector_log import TelemetryCallback, TelemetryLog, telemetry_every

log = logging.getLogger(__name__)


@dataclass
class Start:
    vectors: torch.Tensor  # (VPT, width)
    step: int
    optimizer_state: dict | None
    source: Path | None = None  # the embedding file a resumed run continues from
    init: torch.Tensor | None = None  # (VPT, width): the init vectors, norm control's reference
    ema_average: torch.Tensor | None = None  # a resumed EMA run: the saved (EMA) vectors; `vectors` trains on


def starting_point(cfg: ExperimentConfig, parts: SDParts, captions: dict[str, str | None]) -> Start:
    """A new embedding from the init text, or the stored one when resuming; either way the
    name passes the same checks (characters, length, vocabulary, the captions)."""
    if not cfg.resume:
        init = create(cfg.embedding, parts, captions, seed=cfg.training.seed).vectors
        return Start(init, 0, None, init=init)
    name = check_name(cfg.embedding.name, parts.tokenizer, captions, what="embedding.name")
    path = resume_file(cfg)
    emb = load_embedding(path, expected_width=parts.width)
    e = cfg.embedding
    if emb.n_vectors != e.vectors_per_token:
        raise UserError(f"{path}: has {emb.n_vectors} vectors but embedding.vectors_per_token is "
                        f"{e.vectors_per_token}; set embedding.vectors_per_token={emb.n_vectors}")
    if emb.name not in (name, f"{name}-{emb.step}"):
        log.warning("%s: saved as %r; training continues it as embedding.name %r", path, emb.name, name)
    state, trained = load_training_state(path, emb.vectors, emb.step)
    init = create(cfg.embedding, parts, seed=cfg.training.seed).vectors  # norm control and telemetry compare to it
    if trained is not None:  # an EMA embedding: training goes on from the vectors its average follows
        return Start(trained, emb.step, state, path, init, ema_average=emb.vectors)
    return Start(emb.vectors, emb.step, state, path, init)


def continued_folder(cfg: ExperimentConfig, start: Start) -> Path | None:
    """The run folder a resumed run continues in (its file's own), or None for a new one."""
    own = RunFolder.owning(start.source) if start.source is not None else None
    wanted = RunFolder.requested(cfg)
    return None if own is None or (wanted is not None and wanted != own) else own


def open_run_folder(cfg: ExperimentConfig, start: Start, fresh: bool = False) -> tuple[RunFolder, list[dict[str, float]]]:
    """Where the run writes (locked for the run's life), and the eval rows it keeps.

    A resumed run continues in the run folder its file was saved in, cut back to the
    resumed step (`RunFolder.cut_back`), so each run has one whole curve; with
    `logging.run_id` naming another folder it starts that one, and `summary.json`
    records where it came from. An existing folder is never started again (see
    `RunFolder.create`; `fresh` moves it aside).
    """
    own = continued_folder(cfg, start)
    if own is None:
        return RunFolder.create(cfg, fresh=fresh), []
    folder = RunFolder(own).locked()
    history, kept = folder.cut_back(start.step, cfg.embedding.name)
    rebuild_strips(folder.previews)
    log.info("continuing %s from step %d (what lay beyond it is kept in %s)", own, start.step, history)
    return folder.prepare(cfg), kept


def run_runtime(cfg: ExperimentConfig, parts: SDParts) -> Runtime:
    """The run's resolved device choices (dtype, precision, checkpointing, ...) on this machine."""
    unet_parameters = sum(p.numel() for p in parts.unet.parameters())
    return resolve_runtime(cfg, detect_machine(cfg.training.device), unet_parameters)


def default_preview_prompts(cfg: ExperimentConfig, captions: list[str | None]) -> list[str]:
    if cfg.preview.prompts:
        return list(cfg.preview.prompts)
    first = next((c for c in captions if c), None)
    return ["[name]"] + ([f"{first}, [name]"] if first else [])


def stream_loader(cfg: ExperimentConfig, latents: Latents, start: int, total: int) -> DataLoader:
    """The run's micro-batches from optimizer step `start` on (a population member draws the same)."""
    t = cfg.training
    masks = item_masks(latents.items, [m.shape[-2:] for m in latents.means], t.masked_loss, t.mask_suffix)
    dataset = CaptionedLatents(latents.items, latents.means, latents.stds, cfg.data, read_templates(cfg.data),
                               cfg.embedding.name, t.seed, masks)
    sampler = StreamSampler([it.size for it in latents.items], t.batch_size, t.seed,
                            start=start * t.accumulate, length=(total - start) * t.accumulate)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers)


@dataclass
class Watchers:
    """The callbacks `_finish` reads back: saves, evaluation, the vector guard."""

    saver: cb.EmbeddingSaver
    guard: cb.VectorGuard
    evaluation: cb.EvalCallback | None
    all: list[pl.Callback]


def _callbacks(cfg: ExperimentConfig, parts: SDParts, folder: RunFolder, tracker: Tracker, items: list[Item],
               evaluator, on_eval: Callable[[dict[str, float]], None] | None, start: int, total: int,
               extra: list[pl.Callback]) -> Watchers:
    saver = cb.EmbeddingSaver(folder.embeddings, cfg.training.save_every, parts.checkpoint_hash,
                              parts.checkpoint_name)
    guard = cb.VectorGuard(cfg.eval.max_vector_norm)
    progress = cb.StepProgress(total, start)
    found: list[pl.Callback] = [cb.MetricsCSV(folder), saver, guard]
    if cfg.preview.every:
        prompts = default_preview_prompts(cfg, [it.caption for it in items])
        found.append(cb.PreviewWriter(folder.previews, cfg.preview.every, prompts, hook=tracker.log_previews))
    evaluation = None
    if evaluator is not None:
        def sink(row: dict[str, float]) -> None:
            tracker.log_eval(row)
            progress.latest = row
            if on_eval is not None:
                on_eval(row)

        def keep(module: TextualInversionModule, step: int) -> Path:
            return saver.keep(module.output, cb.optimizer_of(module), step, cfg.embedding.name, module.trained)

        evaluation = cb.EvalCallback(evaluator, folder, sink, keep=keep,
                                     stop_on_plateau=cfg.training.stop_on_plateau, planned_steps=total)
        found.append(evaluation)
    found += extra
    if cfg.logging.progress_bar:
        found.append(progress)
    return Watchers(saver, guard, evaluation, found)


def _trainer(cfg: ExperimentConfig, runtime: Runtime, steps: int, callbacks: list, tracker: Tracker) -> pl.Trainer:
    t = cfg.training
    clip = t.grad_clip != "none"
    return pl.Trainer(
        accelerator="gpu" if runtime.device == "cuda" else "cpu", devices=1, precision=runtime.precision,
        max_steps=steps, max_epochs=1, accumulate_grad_batches=t.accumulate,
        gradient_clip_val=t.grad_clip_value if clip else None, gradient_clip_algorithm=t.grad_clip if clip else None,
        logger=tracker.logger or False, callbacks=callbacks, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
        num_sanity_val_steps=0, limit_val_batches=0, deterministic=False,
    )


def run_summary(folder: RunFolder, final: Path, final_step: int, final_loss: float, norms: list[float],
                stopped: str | None, skipped: list[str], runtime: dict[str, Any],
                evaluation: RunEvaluation | None, start: Start) -> dict[str, Any]:
    """summary.json of a run (a population member's too): final numbers, evaluation, where it came from."""
    summary: dict[str, Any] = {
        "run_dir": str(folder.path), "embedding": str(final), "final_step": final_step, "final_loss": final_loss,
        "vector_norms": norms, "stopped": stopped, "skipped_images": skipped, "runtime": runtime,
    }
    if evaluation is not None:
        summary.update(evaluation.summary())
        summary["eval_settings"] = eval_settings(evaluation.cfg, "training")
    if start.source is not None:
        summary["resumed_from"] = {"file": str(start.source.resolve()), "step": start.step}
    return summary


def _finish(cfg: ExperimentConfig, module: TextualInversionModule, folder: RunFolder, watchers: Watchers,
            skipped: list[str], runtime: Runtime, start: Start, signal_name: str | None) -> tuple[dict[str, Any], Path]:
    """Save the final embedding (`<name>.pt`, and `<name>-<step>.pt` if not saved yet); the summary."""
    # A skipped non-finite step still advances Lightning's counter; the vectors did not move.
    final_step = module.step if module.nonfinite_step is None else module.nonfinite_step
    final = watchers.saver.save_final(module.output, cb.optimizer_of(module), final_step, cfg.embedding.name,
                                      module.trained)
    stopped = watchers.guard.stop_reason or (INTERRUPTED if signal_name else None)
    if module.nonfinite_step is not None:
        stopped = f"non-finite loss at step {module.nonfinite_step}"
        log.error("training stopped at step %d: the loss became NaN/Inf. The last good embedding is %s",
                  module.nonfinite_step, final)
    evaluation = watchers.evaluation.record if watchers.evaluation is not None else None
    summary = run_summary(folder, final, final_step, module.last_loss, module.vector_norms(), stopped, skipped,
                          runtime.describe() | {"attention": module.parts.attention()}, evaluation, start)
    return summary, final


def _fit(trainer: pl.Trainer, module: TextualInversionModule, loader: DataLoader, stop: StopOnSignal,
         folder: RunFolder, name: str) -> None:
    """`trainer.fit`, with Ctrl-C / SIGTERM turned into a stop at the end of the current step."""
    with stop, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LightningModule.*has parameters that were not.*")
        try:
            trainer.fit(module, train_dataloaders=loader)
        except SystemExit:
            # Lightning answers a KeyboardInterrupt (a second Ctrl-C) with sys.exit(1): say what is kept.
            if stop.received is None:
                raise
            saved = folder.checkpoints(name)
            step, path = saved[-1] if saved else (None, None)
            raise RunInterrupted(interrupted_message(stop.received, folder.path, path, step)) from None


def training_inputs(cfg: ExperimentConfig, parts: SDParts, total: int
                    ) -> tuple[Path, list[Item], list[Item], list[str], Start]:
    """The dataset folder, its training and held-out items, the files skipped, and where training
    starts; a resume already at the end of the budget is refused. Population members read theirs
    the same way."""
    data_dir = resolve_data_path(cfg.data.path, "data.path")
    bucket_step = cfg.data.bucket_step or parts.bucket_step
    items, skipped = scan_folder(data_dir, cfg.data.max_side, bucket_step, cfg.training.mask_suffix)
    items, held_out, held_skipped = training_and_held_out(cfg, items, bucket_step)
    start = starting_point(cfg, parts, {it.path.name: it.caption for it in items})
    if start.step >= total:
        raise UserError(f"{cfg.resume}: already at step {start.step}, and training ends at step {total}; "
                        "raise training.max_steps or extend training.learning_rate")
    return data_dir, items, held_out, skipped + held_skipped, start


def run_provenance(cfg: ExperimentConfig, parts: SDParts, data_dir: Path, runtime: Runtime) -> dict[str, Any]:
    """provenance.json: code, packages, device, command line, dataset and model hashes."""
    preset_dir = TOYWORLD_DIR if parts.source == "preset:toyworld" else None
    model = provenance.model_hash(parts.source, parts.file_sha256(), preset_dir)
    return provenance.collect(cfg, data_dir, f"{runtime.device} ({runtime.device_name})", model)


def planned_steps(cfg: ExperimentConfig) -> int:
    """The step training ends at (the schedule's end or max_steps); notes where A1111 would differ."""
    extra = (a1111_extra_step(parse_schedule(cfg.training.learning_rate), cfg.training.max_steps)
             if cfg.training.lr_scheduler == "a1111" else None)
    if extra is not None:
        log.info("training.learning_rate: an entry ends at max_steps (%d) and another follows; A1111 would "
                 "train one more step at %g, tiframework stops at max_steps", cfg.training.max_steps, extra)
    return training_steps(cfg.training)


def _watch_vectors(cfg: ExperimentConfig, module: TextualInversionModule, folder: RunFolder, tracker: Tracker,
                   held: Latents | None, total: int, extra: list[pl.Callback]
                   ) -> tuple[ValidationRecord, list[pl.Callback]]:
    """The validation record, and the validation and telemetry callbacks ahead of the caller's `extra`."""
    validation = ValidationRecord.for_run(cfg, folder.path, tracker.log_eval, total)
    telemetry = TelemetryLog(folder.path, cfg.embedding.name, module.norm_control.init, tracker.log_eval)
    found: list[pl.Callback] = [TelemetryCallback(telemetry, telemetry_every(cfg)), *extra]
    if held is not None:
        found.insert(0, ValidationCallback(ValidationSet.build(cfg, held), validation, total))
    return validation, found


def train(cfg: ExperimentConfig, *, parts: SDParts | None = None, extra_callbacks: list | None = None,
          on_eval: Callable[[dict[str, float]], None] | None = None, fresh: bool = False) -> dict[str, Any]:
    """Train one embedding as `cfg` says; return the summary written to `summary.json`.

    `parts`: already-loaded frozen parts to reuse (a sweep worker loads them once).
    `on_eval`: called with each evaluation row (`{"step": ..., "eval/clip_fidelity": ...}`)
    right after it is written; an exception it raises (e.g. `optuna.TrialPruned`) ends
    the run, with the W&B run still finished.
    `fresh`: an existing `logging.run_id` folder is moved aside instead of refused.
    Ctrl-C / SIGTERM: the current step is saved, then `RunInterrupted` (see `interrupt`).
    """
    preflight(cfg, fresh)  # everything that needs no model: bad input fails in well under a second
    log.info(model_line(cfg))
    total = planned_steps(cfg)
    parts = parts or load_model(cfg.model)
    runtime = run_runtime(cfg, parts)
    data_dir, items, held_out, skipped, start = training_inputs(cfg, parts, total)
    evaluator = make_evaluator(cfg, parts, device=runtime.device) if cfg.eval.every else None
    origin = run_provenance(cfg, parts, data_dir, runtime)

    folder, kept_eval = open_run_folder(cfg, start, fresh)
    tracker = Tracker(cfg, folder.path, provenance=origin)
    try:
        folder.write_provenance(origin)
        parts.prepare(runtime)
        latents = encode_latents(items, parts.vae, cfg.data.cache_dir, progress=cfg.logging.progress_bar)
        held = encode_latents(held_out, parts.vae, cfg.data.cache_dir, progress=False) if held_out else None
        if runtime.offload_vae:
            parts.offload_vae()  # back on the GPU only to decode previews and eval images
        loader = stream_loader(cfg, latents, start.step, total)
        module = TextualInversionModule(cfg, parts, start.vectors, start.step, start.optimizer_state,
                                        compile_unet=runtime.compile, init=start.init, ema_average=start.ema_average)
        stop = StopOnSignal()
        validation, extra = _watch_vectors(cfg, module, folder, tracker, held, total, [*(extra_callbacks or []), stop])
        watchers = _callbacks(cfg, parts, folder, tracker, items, evaluator, on_eval, start.step, total, extra)
        if watchers.evaluation is not None and kept_eval:
            watchers.evaluation.continue_curve(kept_eval, folder.read_per_image(), folder.embeddings,
                                               cfg.embedding.name)
        trainer = _trainer(cfg, runtime, total - start.step, watchers.all, tracker)
        torch.manual_seed(cfg.training.seed)
        log.info("training %s for %d steps on %s", cfg.embedding.name, total - start.step, runtime.summary_line())
        _fit(trainer, module, loader, stop, folder, cfg.embedding.name)
        summary, final = _finish(cfg, module, folder, watchers, skipped + latents.skipped, runtime,
                                 start, stop.received)
        summary.update(validation.summary())
        tracker.finish(summary, final)
        folder.write_summary(summary)
        if stop.received:
            saved = folder.embeddings / f"{cfg.embedding.name}-{summary['final_step']}.pt"
            raise RunInterrupted(interrupted_message(stop.received, folder.path, saved, summary["final_step"]),
                                 summary)
        return summary
    finally:
        tracker.close()
        folder.close()
