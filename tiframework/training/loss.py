"""The training loss, one home for solo and population training.

Textual inversion learns with the diffusion model's own objective: noise a latent to a
random timestep, ask the frozen UNet to predict the noise (or, for v-prediction models,
the velocity) under the prompt's conditioning, and take the mean squared error. Only the
conditioning depends on the trained vectors, so this loss is all that drives them.

Both `TextualInversionModule` (one embedding) and `population.shared_pass` (many
embeddings through one forward pass) build their targets with `noised` and reduce with
`diffusion_loss`; an option that changes the loss (timestep weighting, masks, another
distance) belongs here, and both stacks get it at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class Noised:
    """A micro-batch at its noise level: the UNet's inputs and what it should predict."""

    noisy: torch.Tensor  # (B, 4, h, w): latents noised to `timesteps`
    timesteps: torch.Tensor  # (B,)
    target: torch.Tensor  # (B, 4, h, w): the noise, or the velocity for v-prediction models


def noise_and_timesteps(seeds: Sequence[int], shape: torch.Size | tuple[int, ...],
                        num_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's noise `(B, *shape)` and timestep `(B,)` drawn from its own seed.

    Per-sample generators (not the global RNG) are what make a resumed run replay the
    same noise, and a population member draw what it would draw alone.
    """
    gens = [torch.Generator().manual_seed(int(s) + 1) for s in seeds]
    noise = torch.stack([torch.randn(tuple(shape), generator=g) for g in gens])
    steps = torch.tensor([int(torch.randint(0, num_timesteps, (1,), generator=g)) for g in gens])
    return noise, steps


def noised(scheduler: Any, latents: torch.Tensor, seeds: Sequence[int], prediction_type: str) -> Noised:
    """`latents` (B, 4, h, w) noised from each sample's seed, with the target for `prediction_type`."""
    noise, t = noise_and_timesteps(seeds, latents.shape[1:], scheduler.config.num_train_timesteps)
    noise, t = noise.to(latents.device), t.to(latents.device)
    # v-prediction (SD 2.x-v style checkpoints) learns v = alpha_t * noise - sigma_t * x0.
    target = scheduler.get_velocity(latents, noise, t) if prediction_type == "v_prediction" else noise
    return Noised(scheduler.add_noise(latents, noise, t), t, target)


def diffusion_loss(pred: torch.Tensor, batch: Noised) -> torch.Tensor:
    """The micro-batch's mean loss (a scalar) for the UNet's prediction `pred` (B, 4, h, w).

    Computed in float32 whatever the UNet's dtype: a half-precision MSE underflows for
    small errors late in training.
    """
    return F.mse_loss(pred.float(), batch.target.float())
