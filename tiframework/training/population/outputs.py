"""What each member of a population writes, with the writers a `train` run uses, one set per member,
so a member's run folder and W&B run are a solo run's:

    metrics.csv    one row per optimizer step: loss (mean over its micro-batches), lr, vector norm, time
    embeddings/    `<name>-<step>.pt` + .safetensors + .pt.optim every `training.save_every` steps and
                   at the best evaluation; `<name>.pt` (+ ...), the final one, when it leaves
    previews/, eval.csv, eval_per_image.csv, eval_images/   see `population.evaluation`
    summary.json   `train.run_summary`: final step and loss, norms, evaluation summary, why it stopped
    W&B            one run per member (`tracking.tracker.Tracker`), finished when it leaves
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
from tqdm.auto import tqdm

from tiframework.evaluation.evaluator import Evaluator
from tiframework.tracking.runfolder import RunFolder
from tiframework.tracking.tracker import Tracker
from tiframework.training.callbacks import EmbeddingSaver, PreviewWriter
from tiframework.training.population.module import Member, MemberCallback, PopulationModule
from tiframework.training.run_eval import RunEvaluation
from tiframework.training.train import Start, run_summary

log = logging.getLogger(__name__)


@dataclass(eq=False)
class MemberOutputs:
    """A member's writers: those of a solo run (saver, previews, evaluation record, tracker)."""

    folder: RunFolder
    saver: EmbeddingSaver
    tracker: Tracker
    start: Start
    runtime: dict[str, Any]  # summary.json's `runtime`
    previews: PreviewWriter | None = None
    evaluator: Evaluator | None = None
    evaluation: RunEvaluation | None = None
    validation: Any = None  # its `validation.ValidationRecord`, when validation is on

    def close(self) -> None:
        """Finish its W&B run and close its files (also when training raised)."""
        try:
            self.tracker.close()
        finally:
            self.folder.close()


def outputs(member: Member) -> MemberOutputs:
    assert isinstance(member.outputs, MemberOutputs), f"{member.name}: opened without its outputs"
    return member.outputs


class MemberMetrics(MemberCallback):
    """One metrics.csv row per optimizer step in each member's run folder (as `MetricsCSV`), and
    the same scalars in its W&B run."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}

    def on_member_join(self, trainer, population, member) -> None:
        self.started[id(member)] = time.monotonic()

    def on_members_stepped(self, trainer, population, members) -> None:
        for m in members:
            norms = m.vector_norms()
            norm, lr = sum(norms) / len(norms), m.lr_at(m.step - 1)
            elapsed = time.monotonic() - self.started.get(id(m), time.monotonic())
            out = outputs(m)
            out.folder.append_metrics({"step": m.step, "loss": f"{m.step_loss:.6g}", "lr": f"{lr:.6g}",
                                       "vector_norm": f"{norm:.6g}", "time": f"{elapsed:.3f}"})
            out.tracker.log_step(m.step, {"train/loss": m.step_loss, "train/lr": lr, "train/vector_norm": norm})


class MemberSaver(MemberCallback):
    """Each member's embeddings every `training.save_every` steps (its own `EmbeddingSaver`)."""

    def on_members_stepped(self, trainer, population, members) -> None:
        for m in members:
            every = m.cfg.training.save_every
            if every and m.step % every == 0:
                outputs(m).saver.save_vectors(m.output, m.optimizer, m.step, f"{m.name}-{m.step}", m.trained)


class MemberSummary(MemberCallback):
    """When a member leaves (finished, plateaued, diverged or exploded): its final files, its
    summary.json, its W&B summary and artifact; then its W&B run is finished."""

    def on_member_leave(self, trainer, population, member) -> None:
        out = outputs(member)
        try:
            member.summary = self.finish(population, member, out)
            out.tracker.finish(member.summary, member.summary["embedding"])
            out.folder.write_summary(member.summary)
        finally:
            out.close()

    def finish(self, population: PopulationModule, m: Member, out: MemberOutputs) -> dict[str, Any]:
        final = out.saver.save_final(m.output, m.optimizer, m.step, m.name, m.trained)
        if m.nonfinite_step is not None:
            log.error("%s: training stopped at step %d: the loss became NaN/Inf. The last good embedding is %s",
                      m.name, m.nonfinite_step, final)
        summary = run_summary(out.folder, final, m.step, m.last_loss, m.vector_norms(), m.stopped, list(m.skipped),
                              out.runtime, out.evaluation, out.start)
        return summary | (out.validation.summary() if out.validation is not None else {})


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
