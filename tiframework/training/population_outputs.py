"""What each member of a population writes: its metrics rows, its embeddings and its summary,
into its own run folder, in the files and formats a `train` run writes.

    metrics.csv    one row per optimizer step: loss (mean over its micro-batches), lr, vector norm, time
    embeddings/    `<name>-<step>.pt` + .safetensors (+ .pt.optim) every `training.save_every` steps;
                   `<name>.pt` + .safetensors (+ .pt.optim), the final one, when it leaves
    summary.json   final step and loss, vector norms, why it stopped, skipped images
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from tqdm.auto import tqdm

from tiframework.fileio import atomic_path
from tiframework.sd.embeddings import Embedding, save_embedding
from tiframework.training.population_module import Member, MemberCallback, PopulationModule

log = logging.getLogger(__name__)


def save_member(member: Member, population: PopulationModule, step: int, stem: str) -> Path:
    """`<stem>.pt` + `.safetensors` in the member's `embeddings/`, its AdamW state in `<stem>.pt.optim`."""
    parts = population.parts
    emb = Embedding(name=member.name, vectors=member.vectors.detach().float().cpu().clone(), step=step,
                    sd_checkpoint=parts.checkpoint_hash, sd_checkpoint_name=parts.checkpoint_name)
    pt = member.folder.embeddings / f"{stem}.pt"
    save_embedding(emb, pt)
    save_embedding(emb, member.folder.embeddings / f"{stem}.safetensors")
    if member.optimizer is not None:
        with atomic_path(pt.with_name(pt.name + ".optim")) as tmp:
            torch.save({"step": step, "optimizer_state_dict": member.optimizer.state_dict()}, tmp)
    return pt


class MemberMetrics(MemberCallback):
    """One metrics.csv row per optimizer step in each member's run folder (as `MetricsCSV`)."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}

    def on_member_join(self, trainer, population, member) -> None:
        self.started[id(member)] = time.monotonic()

    def on_members_stepped(self, trainer, population, members) -> None:
        for m in members:
            norms = m.vector_norms()
            elapsed = time.monotonic() - self.started.get(id(m), time.monotonic())
            m.folder.append_metrics({"step": m.step, "loss": f"{m.step_loss:.6g}", "lr": f"{m.lr_at(m.step - 1):.6g}",
                                     "vector_norm": f"{sum(norms) / len(norms):.6g}", "time": f"{elapsed:.3f}"})


class MemberSaver(MemberCallback):
    """Each member's embeddings every `training.save_every` steps, and its final files and
    summary.json when it leaves (finished, diverged or exploded)."""

    def __init__(self) -> None:
        self.saved: dict[int, list[Path]] = {}

    def on_members_stepped(self, trainer, population, members) -> None:
        for m in members:
            every = m.cfg.training.save_every
            if every and m.step % every == 0:
                self.saved.setdefault(id(m), []).append(save_member(m, population, m.step, f"{m.name}-{m.step}"))

    def on_member_leave(self, trainer, population, member) -> None:
        member.summary = self.finish(population, member)
        member.folder.write_summary(member.summary)
        member.folder.close()

    def finish(self, population: PopulationModule, m: Member) -> dict[str, Any]:
        """The final saves (`<name>-<step>` unless already saved, and `<name>`) and the summary."""
        saved = self.saved.get(id(m), [])
        if not saved or saved[-1].stem != f"{m.name}-{m.step}":
            save_member(m, population, m.step, f"{m.name}-{m.step}")
        final = save_member(m, population, m.step, m.name)
        summary: dict[str, Any] = {
            "run_dir": str(m.folder.path), "embedding": str(final), "final_step": m.step,
            "final_loss": m.last_loss, "vector_norms": m.vector_norms(), "stopped": m.stopped,
            "skipped_images": list(m.skipped),
        }
        if m.warnings:
            summary["warnings"] = list(m.warnings)
        return summary


class PopulationProgress(MemberCallback):
    """A tqdm bar over all members' optimizer steps, with the number of active members."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_member_join(self, trainer, population, member) -> None:
        if self.bar is None:
            self.bar = tqdm(total=0, desc="population", unit="step", dynamic_ncols=True)
        self.bar.total += member.end_step - member.start_step
        self.bar.refresh()

    def on_members_stepped(self, trainer, population, members) -> None:
        if self.bar is None:
            return
        active = [m for m in population.members if m.active]
        self.bar.set_postfix({"members": len(active)}, refresh=False)
        self.bar.update(len(members))

    def on_member_leave(self, trainer, population, member) -> None:
        if self.bar is not None and member.step < member.end_step:  # left early: its remaining steps will not come
            self.bar.total -= member.end_step - member.step
            self.bar.refresh()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
