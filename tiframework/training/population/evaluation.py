"""Previews and evaluation of a population's members, each into its own run folder as a solo run.

Each member has the solo run's writers (`callbacks.PreviewWriter`, `run_eval.RunEvaluation`
over its own `Evaluator`); what is shared is the work: the members that evaluate at the same
step have their images generated together (`evaluation.batched.score_together`), each
member's prompt embeddings in its own rows. A member's evaluation happens when a solo
run's would: at its first step, every `eval.every` steps, and at its last step unless just
evaluated; a confirmed plateau with `training.stop_on_plateau` makes that member leave.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tiframework.evaluation.batched import score_together
from tiframework.training.population.module import Member, MemberCallback, PopulationModule
from tiframework.training.population.outputs import MemberOutputs, outputs

log = logging.getLogger(__name__)


class MemberPreviews(MemberCallback):
    """Each member's previews at step 0 and every `preview.every` steps (its own `PreviewWriter`)."""

    def on_members_join(self, trainer, population, members) -> None:
        for m in members:
            writer = outputs(m).previews
            if writer is not None and m.step == 0:
                writer.render_vectors(population.parts, m.cfg, m.output, 0)

    def on_members_stepped(self, trainer, population, members) -> None:
        for m in members:
            writer = outputs(m).previews
            if writer is not None and m.step % writer.every == 0:
                writer.render_vectors(population.parts, m.cfg, m.output, m.step)


def leaving(member: Member) -> bool:
    """Whether the member leaves after this step (so its last evaluation can join this batch)."""
    return member.stopped is not None or member.stop_requested or member.step >= member.end_step


class MemberEvaluation(MemberCallback):
    """Members' evaluations, batched across the members due at the same micro-batch step.

    `max_images`: the most images per shared sampler call (None: each member's per-prompt
    batch side by side).
    """

    def __init__(self, max_images: int | None = None):
        self.max_images = max_images

    def evaluate(self, population: PopulationModule, members: list[Member]) -> None:
        if not members:
            return
        jobs = [(outputs(m).evaluator, m.output, m.step) for m in members]
        for m, row in zip(members, score_together(jobs, self.max_images), strict=True):
            out = outputs(m)
            assert out.evaluation is not None

            def keep(step: int, m: Member = m, out: MemberOutputs = out) -> Path:
                return out.saver.keep(m.output, m.optimizer, step, m.name, m.trained)

            if out.evaluation.record(row, m.step, keep):
                m.request_stop()  # a confirmed plateau: this member leaves, the others go on
            population.dispatch("on_member_eval", m, row)

    def _evaluating(self, members: list[Member]) -> list[Member]:
        return [m for m in members if outputs(m).evaluation is not None]

    def on_members_join(self, trainer, population, members) -> None:
        self.evaluate(population, [m for m in self._evaluating(members)
                                   if outputs(m).evaluation.due_at_start(m.step)])

    def on_members_stepped(self, trainer, population, members) -> None:
        due = []
        for m in self._evaluating(members):
            record = outputs(m).evaluation
            if record.due(m.step) or (leaving(m) and record.due_at_end(m.step)):
                due.append(m)
        self.evaluate(population, due)

    def on_member_leave(self, trainer, population, member) -> None:
        # Left without a last evaluation (the trainer was stopped): as a solo run's on_train_end.
        record = outputs(member).evaluation
        if record is not None and member.nonfinite_step is None and record.due_at_end(member.step):
            self.evaluate(population, [member])
