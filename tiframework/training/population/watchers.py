"""Validation loss and vector telemetry of population members, as a solo run's callbacks write them.

The solo callbacks and the files they write live in `training.validation` and
`training.vector_log`; these are their `MemberCallback` adapters, one record per member.
"""

from __future__ import annotations

from tiframework.training.population.module import MemberCallback
from tiframework.training.validation import ValidationRecord, ValidationSet, due, validation_row
from tiframework.training.vector_log import TelemetryLog, telemetry_every


class MemberValidation(MemberCallback):
    """Population members' validation, as `ValidationCallback` (`sets[member.index]`, `records[...]`)."""

    def __init__(self, sets: dict[int, ValidationSet], records: dict[int, ValidationRecord]):
        self.sets, self.records = sets, records

    def score(self, population, member, step: int) -> None:
        cfg = member.cfg
        if self.records[member.index].write(*validation_row(
                population.parts, population.noise_scheduler, member.output, self.sets[member.index],
                cfg.embedding.name, cfg.model.clip_skip, step)):
            member.request_stop()  # a confirmed validation-loss plateau: an ordinary end

    def on_member_join(self, trainer, population, member) -> None:
        if member.index in self.sets and member.step % self.sets[member.index].v.every == 0:
            self.score(population, member, member.step)

    def on_members_stepped(self, trainer, population, members) -> None:
        for m in members:
            if m.index in self.sets and due(self.sets[m.index].v.every, m.step, m.end_step):
                self.score(population, m, m.step)


class MemberTelemetry(MemberCallback):
    """Population members' telemetry, as `TelemetryCallback` (`logs[member.index]`)."""

    def __init__(self, logs: dict[int, TelemetryLog]):
        self.logs = logs

    def on_members_stepped(self, trainer, population, members) -> None:
        for m in members:
            every = telemetry_every(m.cfg)
            if every and m.step % every == 0 and m.index in self.logs:
                self.logs[m.index].write(population.parts, m.output, m.step)

    def on_member_leave(self, trainer, population, member) -> None:
        if member.index in self.logs:  # a member that joined later has none
            self.logs[member.index].finish(population.parts, member.output, member.step)
