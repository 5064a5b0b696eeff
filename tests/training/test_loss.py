"""The training loss (`training.loss`): noise per sample seed, the target per prediction type."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from tiframework.training.loss import Noised, diffusion_loss, noise_and_timesteps, noised


def test_noise_is_a_function_of_each_sample_seed():
    noise, steps = noise_and_timesteps([7, 8], (4, 2, 2), 1000)
    again, again_steps = noise_and_timesteps([8], (4, 2, 2), 1000)
    assert noise.shape == (2, 4, 2, 2) and steps.shape == (2,)
    assert torch.equal(noise[1:], again) and torch.equal(steps[1:], again_steps)
    assert not torch.equal(noise[0], noise[1])


def test_targets_are_the_noise_or_the_velocity_by_hand():
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012)
    latents = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    noise, t = noise_and_timesteps([3, 4], latents.shape[1:], 1000)
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    # x_t = sqrt(abar) x0 + sqrt(1 - abar) eps; v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022).
    x_t = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    v = abar.sqrt() * noise - (1 - abar).sqrt() * latents

    eps = noised(scheduler, latents, [3, 4], "epsilon")
    torch.testing.assert_close(eps.noisy, x_t)
    torch.testing.assert_close(eps.target, noise)
    assert torch.equal(eps.timesteps, t)
    torch.testing.assert_close(noised(scheduler, latents, [3, 4], "v_prediction").target, v)


def test_loss_is_the_float32_mean_squared_error():
    target = torch.zeros(2, 4, 2, 2)
    pred = torch.full((2, 4, 2, 2), 0.5, dtype=torch.float16)
    loss = diffusion_loss(pred, Noised(target, torch.zeros(2), target))
    assert loss.dtype == torch.float32 and float(loss) == 0.25
