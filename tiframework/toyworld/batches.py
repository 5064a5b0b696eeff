"""Random batches of the world as tensors, and the one training loop every toy model uses."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from tiframework.toyworld.characters import HELD_OUT
from tiframework.toyworld.draw import render
from tiframework.toyworld.world import Attributes, sample_attributes


def to_tensor(images) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) float in [-1, 1] (the VAE's range)."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def world_batch(rng: random.Random, n: int, exclude=HELD_OUT) -> tuple[torch.Tensor, list[Attributes]]:
    """n fresh images of the base world (held-out combinations excluded) and their records."""
    attrs = [sample_attributes(rng, exclude) for _ in range(n)]
    return to_tensor([render(a) for a in attrs]), attrs


def noisy_caption(attrs: Attributes, rng: random.Random, tag_dropout: float, caption_dropout: float) -> str:
    """Shuffled tags with some dropped: the base model must handle partial prompts
    (TI prompts prune traits; `[name]` alone carries none), and 10% empty captions
    teach the unconditional branch that classifier-free guidance needs."""
    if rng.random() < caption_dropout:
        return ""
    tags = [t for t in attrs.tags() if rng.random() >= tag_dropout]
    rng.shuffle(tags)
    return ", ".join(tags)


class Budget:
    """Wall-clock budget for one training phase; `steps()` stops when time is up."""

    def __init__(self, seconds: float, max_steps: int = 1_000_000):
        self.seconds, self.max_steps = seconds, max_steps
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def steps(self) -> Iterator[int]:
        step = 0
        while step < self.max_steps and self.elapsed() < self.seconds:
            yield step
            step += 1


LOG_EVERY = 25


def fit(desc: str, seconds: float, opt: torch.optim.Optimizer, loss_fn: Callable[[int], tuple[torch.Tensor, float]],
        *, warmup: int = 0, clip: float | None = None,
        after_step: Callable[[int], None] | None = None) -> list[float]:
    """The toy world's one training loop: optimizer steps until `seconds` are spent.

    `loss_fn(step)` returns (loss to minimise, number to record); `warmup` ramps every
    group's learning rate linearly over that many steps (AdamW at 1e-3 is unstable at
    step 0); `clip` caps the gradient norm; `after_step(step)` runs after each update
    (EMA, clamps). Returns the recorded numbers, one per step.
    """
    base = [group["lr"] for group in opt.param_groups]
    params = [p for group in opt.param_groups for p in group["params"]]
    losses: list[float] = []
    bar = tqdm(Budget(seconds).steps(), desc=desc, unit="step")
    for step in bar:
        loss, recorded = loss_fn(step)
        for group, lr in zip(opt.param_groups, base, strict=True):
            group["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if after_step is not None:
            after_step(step)
        losses.append(recorded)
        if step % LOG_EVERY == 0:
            recent = losses[-LOG_EVERY:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
    return losses
