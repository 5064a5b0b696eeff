"""Holding the trained vectors' size: norm control (`embedding.norm_control`) and the EMA of
the vectors (`training.ema_*`), one home for solo and population training.

A TI vector that drifts far above the vocabulary's norm dominates the prompt (the "fried"
embedding); the peers hold it down in different ways, all here:

- project (OneTrainer's preserve_embedding_norm): after each step, every vector rescaled
  to `norm_target` (default: the vocabulary's median norm), direction kept;
- decay (cloneofsimo/lora's clip_ti_decay): after each step, each vector's norm n moves to
  n + lambda (target - n) with lambda = min(1, norm_decay_rate x lr), target 0.4 by default;
- retract (diffusers' advanced TI script, retract_embeddings): when the vocabulary's std over
  the vectors' std falls below 0.1, the vectors are scaled by that ratio to the power 0.1;
- init_l2 (the original TI paper's regulariser): `init_l2_weight` x the mean squared distance
  to the init vectors is added to the loss, so the gradient, not a projection, pulls back.

Both stacks call `NormControl.penalty` inside their loss and `NormControl.after_step` right
after each optimizer step with the rate that step used, so a member and a solo run agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from tiframework.configoptions import EMAOptions, NormOptions
from tiframework.sd.embeddings import vector_norms

DECAY_TARGET = 0.4  # lora's clip_ti_decay target norm
RETRACT_BELOW = 0.1  # diffusers' retract: act once the vectors' std is 10x the vocabulary's
RETRACT_POWER = 0.1


@dataclass(frozen=True)
class Vocabulary:
    """What the norm rules compare against: the frozen token table's median row norm and std."""

    median_norm: float
    std: float

    @classmethod
    def of(cls, token_rows: torch.Tensor) -> Vocabulary:
        """From the token-embedding table `(vocab, width)`."""
        rows = token_rows.detach().float()
        return cls(float(rows.norm(dim=1).median()), float(rows.std()))


def token_rows(parts) -> torch.Tensor:
    """The frozen text encoder's token table `(vocab, width)`."""
    return parts.text_encoder.get_input_embeddings().weight


@dataclass
class NormControl:
    """`embedding.norm_control` for one embedding whose init vectors are `init` (VPT, width);
    `source`: the token table `(vocab, width)` (or its `Vocabulary`)."""

    opts: NormOptions
    init: torch.Tensor
    source: torch.Tensor | Vocabulary

    @cached_property
    def vocab(self) -> Vocabulary:
        # Measured on first use, not when a run is built: the sweeps' memory estimate builds
        # modules on fake tensors, where a median cannot be read.
        return self.source if isinstance(self.source, Vocabulary) else Vocabulary.of(self.source)

    def penalty(self, vectors: torch.Tensor) -> torch.Tensor | None:
        """The loss term of init_l2 (a scalar), or None for the rules that act after the step."""
        if self.opts.norm_control != "init_l2" or not self.opts.init_l2_weight:
            return None
        init = self.init.to(vectors.device, vectors.dtype)
        return self.opts.init_l2_weight * ((vectors - init) ** 2).sum(dim=1).mean()

    @torch.no_grad()
    def after_step(self, vectors: torch.Tensor, lr: float) -> None:
        """Apply project / decay / retract to `vectors` (VPT, width) in place after a step at rate `lr`."""
        rule = self.opts.norm_control
        if rule == "project":
            target = self.opts.norm_target or self.vocab.median_norm
            vectors.copy_(torch.nn.functional.normalize(vectors, dim=1) * target)
        elif rule == "decay":
            target = self.opts.norm_target or DECAY_TARGET
            pull = min(1.0, self.opts.norm_decay_rate * lr)
            norm = vectors.norm(dim=1, keepdim=True)  # (VPT, 1)
            vectors.copy_(torch.nn.functional.normalize(vectors, dim=1) * (norm + pull * (target - norm)))
        elif rule == "retract":
            ratio = self.vocab.std / float(vectors.std())
            if ratio < RETRACT_BELOW:
                vectors.mul_(ratio ** RETRACT_POWER)


class VectorEMA:
    """An exponential moving average of the vectors (`training.ema_decay`; 0: none).

    Updated after every `ema_every`-th optimizer step; until step `ema_warmup` it copies the
    vectors, so the average does not start from (and stay near) the init text.
    """

    def __init__(self, opts: EMAOptions, vectors: torch.Tensor, average: torch.Tensor | None = None):
        self.opts = opts
        # (VPT, width): a resumed run passes the average it saved
        self.average = (vectors if average is None else average).detach().float().clone().to(vectors.device)

    @property
    def on(self) -> bool:
        return self.opts.ema_decay > 0

    @torch.no_grad()
    def update(self, vectors: torch.Tensor, step: int) -> None:
        """After optimizer step `step` (1-based: steps completed)."""
        if not self.on or step % self.opts.ema_every:
            return
        current = vectors.detach().float().to(self.average.device)
        if step <= self.opts.ema_warmup:
            self.average.copy_(current)
        else:
            self.average.lerp_(current, 1 - self.opts.ema_decay)


class EmbeddingVectors:
    """What a trained embedding saves, for a solo module and a population member alike: the
    class that mixes this in has `vectors` (the trained parameter) and `ema` (a `VectorEMA`, or None)."""

    @property
    def _averaged(self) -> bool:
        return self.ema is not None and self.ema.on

    @property
    def output(self) -> torch.Tensor:
        """The vectors saved and evaluated: their EMA when `training.ema_decay` is set, else the trained ones."""
        return self.ema.average.to(self.vectors.device) if self._averaged else self.vectors

    @property
    def trained(self) -> torch.Tensor | None:
        """The trained vectors when `output` is their EMA (saved beside it for an exact resume), else None."""
        return self.vectors.detach() if self._averaged else None  # `save_optimizer_state` copies it

    def vector_norms(self) -> list[float]:
        return vector_norms(self.output)
