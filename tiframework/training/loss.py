"""The training loss, one home for solo and population training.

Textual inversion learns with the diffusion model's own objective: noise a latent to a
random timestep, ask the frozen UNet to predict the noise (or, for v-prediction models,
the velocity) under the prompt's conditioning, and take the mean squared error. Only the
conditioning depends on the trained vectors, so this loss is all that drives them.

Both `TextualInversionModule` (one embedding) and `population.shared_pass` (many
embeddings through one forward pass) build their targets with `noised` and reduce with
`diffusion_loss`; an option that changes the loss (timestep weighting, masks, another
distance) belongs here, and both stacks get it at once.

Timestep weighting (`training.loss_weighting`), with SNR = abar / (1 - abar) at the
sample's timestep. Every weight is defined on the epsilon error, as in the papers:

    constant   1
    min_snr    min(SNR, gamma) / SNR              (Hang et al. 2023, "Min-SNR")
    debiased   1 / sqrt(SNR)                      (Yu et al. 2023, "debiased estimation")
    p2         1 / (k + SNR)^gamma                (Choi et al. 2022, "perception prioritized")

A v-prediction model's error is a scaled epsilon error: with x_t fixed,
|v - v_hat|^2 = |eps - eps_hat|^2 / abar = |eps - eps_hat|^2 (SNR + 1) / SNR. So for
v-prediction we multiply each weight by SNR / (SNR + 1): the option then weights the same
per-timestep epsilon error whatever the model predicts. For min_snr this gives
min(SNR, gamma) / (SNR + 1), kohya's and the Min-SNR paper's v form. The peers disagree on
the others: kohya's debiased v weight is 1 / (SNR + 1), ours sqrt(SNR) / (SNR + 1) (the
conversion applied to 1 / sqrt(SNR)); we pin the conversion rule rather than a per-peer table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tiframework.configoptions import LossOptions

# SNR at t = 0 is ~1e3 for SD's schedule but can be inf for others; capped as kohya does, so
# 1/sqrt(SNR) and 1/SNR stay finite.
MAX_SNR = 1000.0


@dataclass
class Noised:
    """A micro-batch at its noise level: the UNet's inputs and what it should predict."""

    noisy: torch.Tensor  # (B, 4, h, w): latents noised to `timesteps`
    timesteps: torch.Tensor  # (B,)
    target: torch.Tensor  # (B, 4, h, w): the noise, or the velocity for v-prediction models
    snr: torch.Tensor | None = None  # (B,): abar / (1 - abar) at each sample's timestep
    v_prediction: bool = False


def noise_and_timesteps(seeds: Sequence[int], shape: torch.Size | tuple[int, ...], num_timesteps: int,
                        noise_offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's noise `(B, *shape)` and timestep `(B,)` drawn from its own seed.

    Per-sample generators (not the global RNG) are what make a resumed run replay the
    same noise, and a population member draw what it would draw alone. The noise offset
    (kohya) is drawn after the timestep, so a run without it draws exactly what it did before.
    """
    gens = [torch.Generator().manual_seed(int(s) + 1) for s in seeds]
    noise = torch.stack([torch.randn(tuple(shape), generator=g) for g in gens])
    steps = torch.tensor([int(torch.randint(0, num_timesteps, (1,), generator=g)) for g in gens])
    if noise_offset:
        # One value per channel and sample, broadcast over the image: lets the model shift the
        # mean brightness, which zero-mean per-pixel noise never teaches it.
        channels = (shape[0],) + (1,) * (len(shape) - 1)
        noise = noise + noise_offset * torch.stack([torch.randn(channels, generator=g) for g in gens])
    return noise, steps


def noised(scheduler: Any, latents: torch.Tensor, seeds: Sequence[int], prediction_type: str,
           noise_offset: float = 0.0) -> Noised:
    """`latents` (B, 4, h, w) noised from each sample's seed, with the target for `prediction_type`."""
    noise, t = noise_and_timesteps(seeds, latents.shape[1:], scheduler.config.num_train_timesteps, noise_offset)
    noise, t = noise.to(latents.device), t.to(latents.device)
    v_pred = prediction_type == "v_prediction"
    # v-prediction (SD 2.x-v style checkpoints) learns v = alpha_t * noise - sigma_t * x0.
    target = scheduler.get_velocity(latents, noise, t) if v_pred else noise
    abar = scheduler.alphas_cumprod.to(latents.device)[t].float()
    return Noised(scheduler.add_noise(latents, noise, t), t, target, abar / (1 - abar), v_pred)


def timestep_weights(snr: torch.Tensor, opts: LossOptions, v_prediction: bool) -> torch.Tensor:
    """Each sample's loss weight `(B,)` for its SNR `(B,)` (the module docstring has the formulas)."""
    snr = snr.float().clamp(max=MAX_SNR)
    kind = opts.loss_weighting
    if kind == "min_snr":
        w = snr.clamp(max=opts.snr_gamma) / snr
    elif kind == "debiased":
        w = 1 / snr.sqrt()
    elif kind == "p2":
        w = 1 / (opts.p2_k + snr) ** opts.p2_gamma
    else:
        w = torch.ones_like(snr)
    return w * snr / (snr + 1) if v_prediction and kind != "constant" else w


def distance(pred: torch.Tensor, target: torch.Tensor, opts: LossOptions) -> torch.Tensor:
    """Elementwise loss of float32 `pred` against `target` (same shape), `training.loss_type`."""
    c = opts.huber_c
    if opts.loss_type == "huber":
        # Pseudo-Huber, scaled so that it is ~d^2 for small d and ~2c|d| for large (kohya's form).
        return 2 * c * (torch.sqrt((pred - target) ** 2 + c * c) - c)
    if opts.loss_type == "smooth_l1":
        return 2 * F.smooth_l1_loss(pred, target, reduction="none", beta=c)
    return (pred - target) ** 2


def mask_weights(masks: torch.Tensor, opts: LossOptions) -> torch.Tensor:
    """Per-pixel loss weights (B, 1, h, w) from latent masks (B, 1, h, w) in [0, 1] (`data.masks`).

    w = u + (1 - u) * mask, u = `training.unmasked_weight`. With `normalize_masked_area` each
    sample's weights are divided by their mean, so its loss is the weighted mean over the
    mask (a small mask does not shrink the loss, OneTrainer's rule); without, the loss is the
    plain mean of the weighted errors over all pixels (A1111's alpha weight).
    """
    u = float(opts.unmasked_weight)
    w = u + (1 - u) * masks.float()
    if opts.normalize_masked_area:
        w = w / w.mean(dim=(1, 2, 3), keepdim=True).clamp(min=1e-8)
    return w


def diffusion_loss(pred: torch.Tensor, batch: Noised, opts: LossOptions | None = None,
                   masks: torch.Tensor | None = None) -> torch.Tensor:
    """The micro-batch's mean loss (a scalar) for the UNet's prediction `pred` (B, 4, h, w).

    Computed in float32 whatever the UNet's dtype: a half-precision MSE underflows for
    small errors late in training. `opts` (`training.*`): distance, timestep weighting and
    how `masks` (B, 1, h, w), the batch's latent loss masks, weight each pixel (`mask_weights`).
    """
    pred, target = pred.float(), batch.target.float()
    if (opts is None or (opts.loss_weighting == "constant" and opts.loss_type == "mse")) and masks is None:
        return F.mse_loss(pred, target)  # the plain objective, bit for bit as before the options
    opts = opts or LossOptions()
    elementwise = distance(pred, target, opts)  # (B, 4, h, w)
    if masks is not None:
        elementwise = elementwise * mask_weights(masks.to(elementwise.device), opts)
    per_sample = elementwise.mean(dim=(1, 2, 3))
    assert batch.snr is not None, "noised() fills snr"
    return (per_sample * timestep_weights(batch.snr, opts, batch.v_prediction)).mean()
