"""`train_population(cfgs)`: many textual-inversion runs trained at once through one frozen model.

A TI run uses the frozen model at batch 1-4, where the hardware is mostly idle; since the
model is frozen, independent embeddings can share every forward and backward pass.
Each config is one member, with its own embedding (name, init text, VPT), dataset,
seed, learning-rate schedule, batch size, accumulation and step count; the members
must share the model (`model.*` except `clip_skip`), the device and the precision.
A member's vectors come out as if it had trained alone with `train(cfg)` (same data
order, noise and loss normalisation; equal up to float32 rounding of batched kernels),
and its run folder is a solo run's: the same `config.yaml`, `metrics.csv`, embeddings,
previews, `eval.csv` / `eval_per_image.csv` / `eval_images/` and `summary.json`, written by
the same code, and one W&B run per member. Evaluations of members due at the same step
generate their images together (`population.evaluation`). A member that diverges, explodes or
(with `training.stop_on_plateau`) plateaus leaves; the others go on. A member with
`resume=` continues in its own run folder, as `train` would. It returns the members'
summaries in the configs' order.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch

from tiframework.config import ExperimentConfig
from tiframework.data.dataset import (
    Item,
)
from tiframework.data.latents import Latents, encode_latents
from tiframework.data.sources import resolve_data_path
from tiframework.errors import UserError
from tiframework.evaluation.evaluator import Evaluator, make_evaluator
from tiframework.sd.models import SDParts, load_model
from tiframework.sd.runtime import Runtime
from tiframework.tracking.runfolder import RunFolder
from tiframework.tracking.tracker import Tracker
from tiframework.training.callbacks import EmbeddingSaver, PreviewWriter
from tiframework.training.population.compatible import check_compatible, member_label
from tiframework.training.population.evaluation import MemberEvaluation, MemberPreviews
from tiframework.training.population.module import Amp, Member, PopulationModule, amp_for
from tiframework.training.population.outputs import (
    MemberMetrics,
    MemberOutputs,
    MemberSaver,
    MemberSummary,
    PopulationProgress,
)
from tiframework.training.population.watchers import MemberTelemetry, MemberValidation
from tiframework.training.preflight import preflight
from tiframework.training.regularise import NormControl, VectorEMA, token_rows
from tiframework.training.run_eval import RunEvaluation
from tiframework.training.schedules import training_steps
from tiframework.training.train import (
    Start,
    continued_folder,
    default_preview_prompts,
    open_run_folder,
    run_provenance,
    run_runtime,
    stream_loader,
    training_inputs,
)
from tiframework.training.validation import (
    ValidationRecord,
    ValidationSet,
)
from tiframework.training.vector_log import TelemetryLog

log = logging.getLogger(__name__)

def check_folders(plans: Sequence[Plan]) -> None:
    """No two members may write one run folder (a fixed run id, or the folder a resume continues)."""
    fixed = [continued_folder(p.cfg, p.start) or RunFolder.requested(p.cfg) for p in plans]
    named = [f for f in fixed if f is not None]
    if len(set(named)) != len(named):
        dup = next(f for f in named if named.count(f) > 1)
        raise UserError(f"{dup}: two members would write the same run folder; give each a different "
                        "logging.run_id (or logging.experiment), or resume each from its own run")


@dataclass
class Plan:
    """A member checked and ready to open: its images, starting point and end step."""

    index: int
    cfg: ExperimentConfig
    items: list[Item]
    skipped: list[str]
    start: Start
    total: int
    runtime: Runtime
    evaluator: Evaluator | None = None
    held_out: list[Item] | None = None  # its validation images (`validation.*`)


def plan_member(index: int, cfg: ExperimentConfig, parts: SDParts) -> Plan:
    """Everything that can fail on a member's input, before any run folder exists (its
    evaluator too: prompts, CLIP weights, reference art)."""
    try:
        preflight(cfg)  # as a solo run: data, templates, name, schedule, and a run folder free to write
        total = training_steps(cfg.training)
        _, items, held_out, skipped, start = training_inputs(cfg, parts, total)
        runtime = run_runtime(cfg, parts)
        evaluator = make_evaluator(cfg, parts, device=runtime.device) if cfg.eval.every else None
    except UserError as exc:
        raise UserError(f"{member_label(index, cfg)}: {exc}") from None
    return Plan(index, cfg, items, skipped, start, total, runtime, evaluator, held_out)


def member_latents(plan: Plan, parts: SDParts) -> Latents:
    """The member's latents, encoded by the frozen VAE or read from the cache."""
    cfg = plan.cfg
    try:
        return encode_latents(plan.items, parts.vae, cfg.data.cache_dir, progress=cfg.logging.progress_bar)
    except UserError as exc:
        raise UserError(f"{member_label(plan.index, cfg)}: {exc}") from None


def open_member(plan: Plan, parts: SDParts, latents: Latents | None = None) -> Member:
    """Build the member's data stream, open its run folder (its own one when resuming) and its
    W&B run, and set up its writers (latents encoded here unless given)."""
    cfg = plan.cfg
    latents = latents or member_latents(plan, parts)
    loader = stream_loader(cfg, latents, plan.start.step, plan.total)
    origin = run_provenance(cfg, parts, resolve_data_path(cfg.data.path or "", "data.path"), plan.runtime)
    folder, kept_eval = open_run_folder(cfg, plan.start)
    try:
        folder.write_provenance(origin)
        tracker = Tracker(cfg, folder.path, provenance=origin)
    except BaseException:
        folder.close()
        raise
    saver = EmbeddingSaver(folder.embeddings, cfg.training.save_every, parts.checkpoint_hash, parts.checkpoint_name)
    out = MemberOutputs(folder, saver, tracker, plan.start, plan.runtime.describe() | {"attention": parts.attention()})
    if cfg.preview.every:
        prompts = default_preview_prompts(cfg, [it.caption for it in plan.items])
        out.previews = PreviewWriter(folder.previews, cfg.preview.every, prompts, hook=tracker.log_previews)
    if plan.evaluator is not None:
        out.evaluator = plan.evaluator
        out.evaluation = RunEvaluation(plan.evaluator, folder, tracker.log_eval,
                                       stop_on_plateau=cfg.training.stop_on_plateau, planned_steps=plan.total)
        if kept_eval:
            out.evaluation.continue_curve(kept_eval, folder.read_per_image(), folder.embeddings, cfg.embedding.name)
    vectors = torch.nn.Parameter(plan.start.vectors.detach().clone().float())
    init = plan.start.init if plan.start.init is not None else plan.start.vectors
    return Member(index=plan.index, cfg=cfg, vectors=vectors, start_step=plan.start.step, end_step=plan.total,
                  loader=loader, folder=folder, outputs=out, optimizer_state=plan.start.optimizer_state,
                  skipped=plan.skipped + latents.skipped,
                  norm_control=NormControl(cfg.embedding, init.detach().float().clone(), token_rows(parts)),
                  ema=VectorEMA(cfg.training, vectors, plan.start.ema_average))


def outputs_tracker_log(member: Member):
    """Where a member's validation rows go in W&B: its own run."""
    return member.outputs.tracker.log_eval


def _trainer(accelerator: str, callbacks: list[pl.Callback]) -> pl.Trainer:
    # max_steps=-1: the population ends when its last member leaves, not at a global step count.
    return pl.Trainer(accelerator=accelerator, devices=1, precision="32-true", max_epochs=1, max_steps=-1,
                      logger=False, callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, deterministic=False)


def train_population(cfgs: Sequence[ExperimentConfig], *, parts: SDParts | None = None,
                     callbacks: list[pl.Callback] | None = None, max_samples: int | None = None,
                     amp: Amp | None = None, max_eval_images: int | None = None) -> list[dict[str, Any]]:
    """Train one embedding per config, all at once; return each member's summary (its summary.json).

    `parts`: already-loaded frozen parts to reuse. `callbacks`: extra Lightning callbacks
    (`MemberCallback`s follow members: joins, steps, evaluation rows, departures).
    `max_samples`: most samples per shared forward/backward pass (bounds activation
    memory; None: every member's micro-batch at once). `amp`: override the mixed
    precision chosen from `training.precision`. `max_eval_images`: most images per shared
    sampler call when members evaluate together (None: each member's per-prompt batch,
    side by side for all members due at that step).
    """
    check_compatible(cfgs)
    parts = parts or load_model(cfgs[0].model)
    plans = [plan_member(i, cfg, parts) for i, cfg in enumerate(cfgs)]
    check_folders(plans)
    runtime = plans[0].runtime
    parts.prepare(runtime)
    encoded = [member_latents(plan, parts) for plan in plans]  # can still fail: no run folder exists yet
    held = {p.index: ValidationSet.build(p.cfg, encode_latents(p.held_out, parts.vae, p.cfg.data.cache_dir, False))
            for p in plans if p.held_out}
    if runtime.offload_vae:
        parts.offload_vae()  # back on the GPU only to decode previews and eval images
    accelerator = "gpu" if runtime.device == "cuda" else "cpu"
    members: list[Member] = []
    module: PopulationModule | None = None
    try:
        for plan, latents in zip(plans, encoded, strict=True):
            members.append(open_member(plan, parts, latents))
        bf16 = accelerator == "gpu" and torch.cuda.is_bf16_supported()
        module = PopulationModule(parts, members, amp or amp_for(cfgs[0].training.precision, accelerator, bf16),
                                  max_samples=max_samples, compile_unet=runtime.compile)
        # In this order at each step, as a solo run's callbacks: metrics, saves, previews, evaluation;
        # on leaving: the last evaluation, then the final files and summary, then the caller's callbacks.
        records = {m.index: ValidationRecord.for_run(m.cfg, m.folder.path, outputs_tracker_log(m), m.end_step)
                   for m in members if m.index in held}
        telemetry = {m.index: TelemetryLog(m.folder.path, m.name, m.norm_control.init, outputs_tracker_log(m))
                     for m in members}
        for m in members:
            m.outputs.validation = records.get(m.index)
        found: list[pl.Callback] = [MemberMetrics(), MemberSaver(), MemberPreviews(), MemberValidation(held, records),
                                    MemberEvaluation(max_eval_images), MemberTelemetry(telemetry), MemberSummary(),
                                    *(callbacks or [])]
        if any(c.logging.progress_bar for c in cfgs):
            found.append(PopulationProgress())
        trainer = _trainer(accelerator, found)
        torch.manual_seed(cfgs[0].training.seed)  # nothing in a step draws from it; kept deterministic anyway
        log.info("training a population of %d on %s: %s", len(members), runtime.summary_line(),
                 ", ".join(m.name for m in members))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(module, train_dataloaders=module.tick_loader())  # members' final files: on_train_end
        return [m.summary or {} for m in module.members]
    finally:
        for m in module.members if module is not None else members:  # joined members too; W&B runs finished
            if m.outputs is not None:
                m.outputs.close()
