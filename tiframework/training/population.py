"""`train_population(cfgs)`: many textual-inversion runs trained at once through one frozen model.

A TI run uses the frozen model at batch 1-4, where the hardware is mostly idle; since the
model is frozen, independent embeddings can share every forward and backward pass.
Each config is one member, with its own embedding (name, init text, VPT), dataset,
seed, learning-rate schedule, batch size, accumulation and step count; the members
must share the model (`model.*` except `clip_skip`), the device and the precision.
A member's vectors come out as if it had trained alone with `train(cfg)` (same data
order, noise and loss normalisation; equal up to float32 rounding of batched kernels),
and its run folder holds the same `config.yaml`, `metrics.csv`, embeddings and
`summary.json`. It returns the members' summaries in the configs' order.

Previews, evaluation and W&B logging are not part of population training yet: a member
that asks for them trains without them, with a warning in its summary; score its
checkpoints afterwards with `tiframework eval <run folder>`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tiframework.config import ExperimentConfig
from tiframework.data.dataset import (
    CaptionedLatents,
    Item,
    StreamSampler,
    collate,
    read_templates,
    scan_folder,
)
from tiframework.data.latents import Latents, encode_latents
from tiframework.data.sources import resolve_data_path
from tiframework.errors import UserError
from tiframework.sd.models import SDParts, load_model
from tiframework.tracking.runfolder import RunFolder
from tiframework.training.population_module import Amp, Member, PopulationModule, amp_for
from tiframework.training.population_outputs import MemberMetrics, MemberSaver, PopulationProgress
from tiframework.training.schedules import parse_schedule, total_steps
from tiframework.training.train import Start, starting_point

log = logging.getLogger(__name__)

NOT_YET = ("preview.every", "eval.every", "logging.wandb")


def member_label(index: int, cfg: ExperimentConfig) -> str:
    return f"member {index} ({cfg.logging.run_id or cfg.embedding.name})"


def check_compatible(cfgs: Sequence[ExperimentConfig]) -> None:
    """One process, one frozen model: the members must agree on the model, device and precision."""
    if not cfgs:
        raise UserError("a population needs at least one config")
    first = cfgs[0]
    model = first.model.model_dump(exclude={"clip_skip"})
    for i, cfg in enumerate(cfgs[1:], start=1):
        if cfg.model.model_dump(exclude={"clip_skip"}) != model:
            raise UserError(f"{member_label(i, cfg)}: model.* differs from member 0's; a population trains "
                            "through one frozen model (only model.clip_skip may differ): give every member "
                            "the same model settings")
        for key in ("device", "precision"):
            if getattr(cfg.training, key) != getattr(first.training, key):
                raise UserError(f"{member_label(i, cfg)}: training.{key} differs from member 0's; "
                                f"all members run in one process: give them the same training.{key}")
    fixed = [Path(c.logging.runs_dir) / (c.logging.experiment or "default") / c.logging.run_id
             for c in cfgs if c.logging.run_id]
    if len(set(fixed)) != len(fixed):
        dup = next(p for p in fixed if fixed.count(p) > 1)
        raise UserError(f"{dup}: two members would write the same run folder; give each a different "
                        "logging.run_id (or logging.experiment)")


def accelerator_for(cfg: ExperimentConfig) -> str:
    device = cfg.training.device
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("training.device: cuda was asked for but no GPU is visible; use training.device=auto")
    return "gpu" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def member_loader(cfg: ExperimentConfig, latents: Latents, start: int, total: int) -> DataLoader:
    """The member's micro-batches from optimizer step `start` on: exactly the stream `train` draws."""
    t = cfg.training
    dataset = CaptionedLatents(latents.items, latents.means, latents.stds, cfg.data, read_templates(cfg.data),
                               cfg.embedding.name, t.seed)
    sampler = StreamSampler([it.size for it in latents.items], t.batch_size, t.seed,
                            start=start * t.accumulate, length=(total - start) * t.accumulate)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers)


@dataclass
class Plan:
    """A member checked and ready to open: its images, starting point and end step."""

    index: int
    cfg: ExperimentConfig
    items: list[Item]
    skipped: list[str]
    start: Start
    total: int


def plan_member(index: int, cfg: ExperimentConfig, parts: SDParts) -> Plan:
    """Everything that can fail on a member's input, before any run folder exists."""
    try:
        if not cfg.data.path:
            raise UserError("data.path: no dataset given; set data.path to a folder of images with .txt captions")
        read_templates(cfg.data)
        total = total_steps(parse_schedule(cfg.training.learning_rate), cfg.training.max_steps)
        data_dir = resolve_data_path(cfg.data.path, "data.path")
        items, skipped = scan_folder(data_dir, cfg.data.max_side, cfg.data.bucket_step or parts.bucket_step)
        start = starting_point(cfg, parts, {it.path.name: it.caption for it in items})
        if start.step >= total:
            raise UserError(f"{cfg.resume}: already at step {start.step}, and training ends at step {total}; "
                            "raise training.max_steps or extend training.learning_rate")
    except UserError as exc:
        raise UserError(f"{member_label(index, cfg)}: {exc}") from None
    return Plan(index, cfg, items, skipped, start, total)


def member_latents(plan: Plan, parts: SDParts) -> Latents:
    """The member's latents, encoded by the frozen VAE or read from the cache."""
    cfg = plan.cfg
    try:
        return encode_latents(plan.items, parts.vae, cfg.data.cache_dir, progress=cfg.logging.progress_bar)
    except UserError as exc:
        raise UserError(f"{member_label(plan.index, cfg)}: {exc}") from None


def open_member(plan: Plan, parts: SDParts, latents: Latents | None = None) -> Member:
    """Build the member's data stream and create its run folder (latents encoded here unless given)."""
    cfg = plan.cfg
    latents = latents or member_latents(plan, parts)
    loader = member_loader(cfg, latents, plan.start.step, plan.total)
    folder = RunFolder.create(cfg)
    return Member(index=plan.index, cfg=cfg, vectors=torch.nn.Parameter(plan.start.vectors.detach().clone().float()),
                  start_step=plan.start.step, end_step=plan.total, loader=loader, folder=folder,
                  optimizer_state=plan.start.optimizer_state, skipped=plan.skipped + latents.skipped,
                  warnings=skipped_features(cfg))


def skipped_features(cfg: ExperimentConfig) -> list[str]:
    """A warning for what a member asked for that population training does not do yet."""
    asked = [key for key in NOT_YET if _value(cfg, key)]
    if not asked:
        return []
    return [f"population training does not run {', '.join(asked)} yet: this run trained without them; "
            "score its checkpoints with `tiframework eval <run folder>`"]


def _value(cfg: ExperimentConfig, key: str) -> Any:
    section, leaf = key.split(".")
    return getattr(getattr(cfg, section), leaf)


def _trainer(accelerator: str, callbacks: list[pl.Callback]) -> pl.Trainer:
    # max_steps=-1: the population ends when its last member leaves, not at a global step count.
    return pl.Trainer(accelerator=accelerator, devices=1, precision="32-true", max_epochs=1, max_steps=-1,
                      logger=False, callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, deterministic=False)


def train_population(cfgs: Sequence[ExperimentConfig], *, parts: SDParts | None = None,
                     callbacks: list[pl.Callback] | None = None, max_samples: int | None = None,
                     amp: Amp | None = None) -> list[dict[str, Any]]:
    """Train one embedding per config, all at once; return each member's summary (its summary.json).

    `parts`: already-loaded frozen parts to reuse. `callbacks`: extra Lightning callbacks
    (`MemberCallback`s follow members). `max_samples`: most samples per shared
    forward/backward pass (bounds activation memory; None: every member's micro-batch at
    once). `amp`: override the mixed precision chosen from `training.precision`.
    """
    check_compatible(cfgs)
    parts = parts or load_model(cfgs[0].model)
    accelerator = accelerator_for(cfgs[0])
    plans = [plan_member(i, cfg, parts) for i, cfg in enumerate(cfgs)]
    if accelerator == "gpu":
        parts.vae.to("cuda")
    encoded = [member_latents(plan, parts) for plan in plans]  # can still fail: no run folder exists yet
    members: list[Member] = []
    module: PopulationModule | None = None
    try:
        for plan, latents in zip(plans, encoded, strict=True):
            members.append(open_member(plan, parts, latents))
            for note in members[-1].warnings:
                log.warning("%s: %s", member_label(plan.index, plan.cfg), note)
        bf16 = accelerator == "gpu" and torch.cuda.is_bf16_supported()
        module = PopulationModule(parts, members, amp or amp_for(cfgs[0].training.precision, accelerator, bf16),
                                  max_samples=max_samples)
        found: list[pl.Callback] = [MemberMetrics(), MemberSaver(), *(callbacks or [])]
        if any(c.logging.progress_bar for c in cfgs):
            found.append(PopulationProgress())
        trainer = _trainer(accelerator, found)
        torch.manual_seed(cfgs[0].training.seed)  # nothing in a step draws from it; kept deterministic anyway
        log.info("training a population of %d on %s: %s", len(members), accelerator,
                 ", ".join(m.name for m in members))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(module, train_dataloaders=module.tick_loader())  # members' final files: on_train_end
        return [m.summary or {} for m in module.members]
    finally:
        for m in module.members if module is not None else members:  # joined members too
            m.folder.close()
