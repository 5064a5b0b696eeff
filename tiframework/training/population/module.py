"""The population LightningModule: K embeddings trained at once through one frozen model.

Each micro-batch step (a "tick") takes every active member's own next micro-batch, runs
them through shared text-encoder and UNet calls (`shared_pass`), and backpropagates the
sum of the members' losses, each divided by its own accumulation: a member's loss
depends only on its own vectors, so the gradient of the sum with respect to its vectors
is exactly the gradient of its own loss. Then each member whose accumulation window is
complete takes its own AdamW step at its own learning rate. A member leaves when it
reaches its last step, when its loss turns NaN/Inf (its vectors stay the last good
ones) or when its vectors explode; the others go on. Members may also join while the
population runs (`join`), starting their own stream at their own step 0.

Lightning runs the loop, places the module on the device and calls the callbacks, in
manual optimization: accumulation, clipping and optimizer steps are per member, which
Lightning's automatic optimization (one accumulation count, one optimizer) cannot
express. Mixed precision is done here rather than by Lightning's precision plugin:
the plugin holds one fp16 GradScaler and updates it after every optimizer step, which
with K optimizers stepping at different micro-batches would unscale one member's
accumulated gradient with a scale another member changed. Here each member has its
own scaler, stepped and updated only at its own optimizer steps, as when it trains alone.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from tiframework.config import ExperimentConfig
from tiframework.evaluation.diagnostics import (
    ExplodingEmbedding,
    NonFiniteLoss,
    check_loss,
    check_vector_norms,
)
from tiframework.sd.models import SDParts
from tiframework.training.population.shared_pass import MemberBatch, member_losses, partition
from tiframework.training.regularise import EmbeddingVectors, NormControl, VectorEMA
from tiframework.training.schedules import learning_rate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Amp:
    """Mixed precision of the shared pass: the autocast dtype (None: float32) and whether
    each member scales its loss with its own GradScaler (float16)."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    scaled: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()

    def scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.scaled else None


def amp_for(precision: str, accelerator: str, bf16_supported: bool) -> Amp:
    """`training.precision` on this accelerator, as `train` chooses it: the CPU always runs float32."""
    if accelerator != "gpu" or precision == "32":
        return Amp("cuda" if accelerator == "gpu" else "cpu")
    if precision == "bf16" or (precision == "auto" and bf16_supported):
        return Amp("cuda", torch.bfloat16)
    return Amp("cuda", torch.float16, scaled=True)


@dataclass(eq=False)
class Member(EmbeddingVectors):
    """One embedding of a population: what is its own (config, vectors, data stream,
    optimizer, counters) and where its outputs go (`folder`, a `tracking.runfolder.RunFolder`)."""

    index: int
    cfg: ExperimentConfig
    vectors: torch.nn.Parameter  # (VPT, width)
    start_step: int
    end_step: int  # the optimizer step its training ends at
    loader: DataLoader  # its micro-batches from `start_step` on, as `train` would draw them
    folder: Any = None
    outputs: Any = None  # its writers (`population.outputs.MemberOutputs`): saves, previews, evaluation, W&B
    optimizer_state: dict | None = None
    skipped: list[str] = field(default_factory=list)  # images it could not read
    steps_done: int = 0
    micro: int = 0  # micro-batches in the current accumulation window
    losses: list[float] = field(default_factory=list)  # the current window's micro-batch losses
    step_loss: float = math.nan  # mean loss of the last completed optimizer step
    last_loss: float = math.nan
    stopped: str | None = None  # why it left early (non-finite loss, exploding vectors)
    stop_requested: bool = False  # leave after this step's callbacks (e.g. a confirmed plateau)
    nonfinite_step: int | None = None
    left: bool = False
    optimizer: torch.optim.Optimizer | None = None
    scaler: torch.amp.GradScaler | None = None
    summary: dict[str, Any] | None = None  # filled when its outputs are final
    norm_control: NormControl | None = None  # `embedding.norm_control`, as `TextualInversionModule`'s
    ema: VectorEMA | None = None  # `training.ema_*`
    _batches: Iterator[dict] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.cfg.embedding.name

    @property
    def step(self) -> int:
        """Optimizer steps completed, counting those before a resume (A1111's step)."""
        return self.start_step + self.steps_done

    @property
    def active(self) -> bool:
        return not self.left

    def request_stop(self, reason: str | None = None) -> None:
        """Leave once this optimizer step's callbacks have run (reason None: an ordinary end,
        e.g. a confirmed plateau; a string goes to its summary's `stopped`)."""
        self.stop_requested = True
        self.stopped = self.stopped or reason

    def lr_at(self, step: int) -> float:
        return learning_rate(self.cfg.training, step)

    def next_batch(self) -> dict:
        if self._batches is None:
            self._batches = iter(self.loader)
        return next(self._batches)


class MemberCallback(pl.Callback):
    """A callback that follows members: joins, completed optimizer steps, evaluations, departures.

    `on_members_join` and `on_members_stepped` get every member that joined (at the start:
    all of them) or completed an optimizer step in this micro-batch step at once (each at
    its own `member.step`), so work over members (evaluation, previews) can be batched.
    To end a member from a callback, call `member.request_stop(reason)`.
    """

    def on_members_join(self, trainer: pl.Trainer, population: PopulationModule, members: list[Member]) -> None:
        for member in members:
            self.on_member_join(trainer, population, member)

    def on_member_join(self, trainer: pl.Trainer, population: PopulationModule, member: Member) -> None:
        pass

    def on_member_eval(self, trainer: pl.Trainer, population: PopulationModule, member: Member,
                       row: dict[str, float]) -> None:
        """After each of its evaluation rows is written (`{"step": ..., "eval/clip_fidelity": ...}`)."""

    def on_members_stepped(self, trainer: pl.Trainer, population: PopulationModule, members: list[Member]) -> None:
        pass

    def on_member_leave(self, trainer: pl.Trainer, population: PopulationModule, member: Member) -> None:
        pass


class _Ticks(IterableDataset):
    """Lightning's batches: tick numbers while any member is active (members fetch their own data)."""

    def __init__(self, population: PopulationModule):
        self.population = population

    def __iter__(self) -> Iterator[int]:
        tick = 0
        while any(m.active for m in self.population.members):
            yield tick
            tick += 1


class PopulationModule(pl.LightningModule):
    """`state_dict()` holds the members' vectors only; the frozen parts are a plain attribute,
    already placed (`SDParts.prepare`)."""

    def __init__(self, parts: SDParts, members: list[Member], amp: Amp | None = None,
                 max_samples: int | None = None, compile_unet: bool = False):
        super().__init__()
        self.automatic_optimization = False
        self.parts = parts
        # The frozen UNet's call in training passes (compiled or not), as `TextualInversionModule`.
        self.run_unet = (torch.compile(parts.unet) if compile_unet else parts.unet).__call__
        self.amp = amp or Amp()
        self.max_samples = max_samples  # samples per shared forward/backward; None: all at once
        self.noise_scheduler = parts.noise_scheduler()
        self.members: list[Member] = []
        self.vectors = torch.nn.ParameterList()
        self._started = self._ended = False
        for m in members:
            self._register(m)

    # --- membership -----------------------------------------------------------------------

    def _register(self, member: Member) -> None:
        self.members.append(member)
        self.vectors.append(member.vectors)

    def _make_optimizer(self, member: Member) -> torch.optim.Optimizer:
        # Only the member's vectors, as `TextualInversionModule.configure_optimizers`.
        opt = torch.optim.AdamW([member.vectors], lr=member.lr_at(member.start_step),
                                weight_decay=member.cfg.training.weight_decay)
        if member.optimizer_state is not None:
            opt.load_state_dict(member.optimizer_state)
        member.optimizer, member.scaler = opt, self.amp.scaler()
        return opt

    def join(self, member: Member) -> None:
        """Add a member while the population trains (from a `MemberCallback`, e.g. when another
        leaves): it draws its first micro-batch at the next micro-batch step."""
        if self._ended:
            raise RuntimeError(f"{member.name}: the population has finished training; start a new one")
        with torch.no_grad():
            member.vectors.data = member.vectors.data.to(self.device)
        self._register(member)
        self._make_optimizer(member)
        self.dispatch("on_members_join", [member])

    def leave(self, member: Member, reason: str | None = None) -> None:
        """Take a member out (reason None: it finished); callbacks write its final outputs."""
        if member.left:
            return
        member.left, member.stopped = True, reason
        member._batches = None  # ends its DataLoader's worker processes, if any
        self.dispatch("on_member_leave", member)

    def dispatch(self, hook: str, *args: Any) -> None:
        for cb in self.trainer.callbacks:
            if isinstance(cb, MemberCallback):
                getattr(cb, hook)(self.trainer, self, *args)

    def tick_loader(self) -> DataLoader:
        return DataLoader(_Ticks(self), batch_size=None)

    # --- Lightning hooks ------------------------------------------------------------------

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self._make_optimizer(m) for m in self.members]

    def on_train_start(self) -> None:
        if not self._started:
            self._started = True
            self.dispatch("on_members_join", list(self.members))

    def on_train_end(self) -> None:
        self._ended = True
        for m in list(self.members):  # still active only if something stopped the trainer early
            self.leave(m, None if m.step >= m.end_step else f"training stopped at step {m.step}")

    def training_step(self, batch: int, batch_idx: int) -> None:
        fetched = [(m, m.next_batch()) for m in self.members if m.active]
        if not fetched:
            return None  # Lightning fetches one tick ahead; the last one can find everyone gone
        sizes = [len(b["prompts"]) for _, b in fetched]
        for group in partition(sizes, self.max_samples):
            self._forward_backward([fetched[i] for i in group])
        stepped = []
        for m, _ in fetched:
            if m.active:
                m.micro += 1
                if m.micro == m.cfg.training.accumulate:
                    self._optimizer_step(m)
                    stepped.append(m)
        if stepped:
            self.dispatch("on_members_stepped", stepped)
        for m in stepped:
            if m.stopped is not None or m.stop_requested or m.step >= m.end_step:
                self.leave(m, m.stopped)  # after its step's metrics and saves, as `train`'s guard
        return None

    # --- one tick -------------------------------------------------------------------------

    def _forward_backward(self, fetched: list[tuple[Member, dict]]) -> None:
        batches = [MemberBatch.from_collated(b, m.name, m.vectors, m.cfg.model.clip_skip, m.cfg.training)
                   for m, b in fetched]
        with self.amp.autocast():
            losses = member_losses(self.parts, self.noise_scheduler, batches, self.device, unet=self.run_unet)
        losses = [_with_penalty(m, loss) for (m, _), loss in zip(fetched, losses, strict=True)]
        total = None
        for (m, _), loss in zip(fetched, losses, strict=True):
            try:
                m.last_loss = check_loss(loss, m.step)
            except NonFiniteLoss as exc:
                # Left out of the backward: its vectors stay the last good ones, the others go on.
                m.nonfinite_step = m.step
                log.error("%s: %s; it leaves the population, the last good embedding is kept", m.name, exc)
                self.leave(m, f"non-finite loss at step {m.step}")
                continue
            m.losses.append(m.last_loss)
            # Divided by the member's accumulation, as Lightning's automatic optimization does.
            term = loss / m.cfg.training.accumulate
            term = m.scaler.scale(term) if m.scaler is not None else term
            total = term if total is None else total + term
        if total is not None:
            self.manual_backward(total)

    def _optimizer_step(self, member: Member) -> None:
        t, opt = member.cfg.training, member.optimizer
        assert opt is not None
        if member.scaler is not None:
            member.scaler.unscale_(opt)
        if t.grad_clip == "norm":
            torch.nn.utils.clip_grad_norm_([member.vectors], t.grad_clip_value)
        elif t.grad_clip == "value":
            torch.nn.utils.clip_grad_value_([member.vectors], t.grad_clip_value)
        for group in opt.param_groups:
            group["lr"] = member.lr_at(member.step)
        if member.scaler is not None:
            member.scaler.step(opt)
            member.scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        member.micro = 0
        member.steps_done += 1
        if member.norm_control is not None:
            member.norm_control.after_step(member.vectors.data, opt.param_groups[0]["lr"])
        if member.ema is not None:
            member.ema.update(member.vectors, member.step)
        member.step_loss = sum(member.losses) / max(1, len(member.losses))
        member.losses.clear()
        try:
            check_vector_norms(member.vectors, member.cfg.eval.max_vector_norm, member.step)
        except ExplodingEmbedding as exc:
            log.warning("%s: %s; it leaves the population", member.name, exc)
            member.stopped = str(exc)


def _with_penalty(member: Member, loss: torch.Tensor) -> torch.Tensor:
    """The member's loss plus its norm-control penalty (init_l2), as `TextualInversionModule.noise_loss`."""
    penalty = member.norm_control.penalty(member.vectors) if member.norm_control is not None else None
    return loss if penalty is None else loss + penalty
