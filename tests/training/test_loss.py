"""The training loss (`training.loss`): noise per sample seed, the target per prediction type."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from tiframework.configoptions import LossOptions
from tiframework.training.loss import (
    Noised,
    diffusion_loss,
    distance,
    noise_and_timesteps,
    noised,
    timestep_weights,
)


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


# --- the options (`training.loss_weighting`, loss_type, noise_offset), against numbers worked by hand

SNR = torch.tensor([0.25, 4.0, 25.0])


def weights(kind: str, v: bool, **kw) -> list[float]:
    return timestep_weights(SNR, LossOptions(loss_weighting=kind, **kw), v).tolist()


def test_timestep_weights_for_epsilon_by_hand():
    assert weights("constant", False) == [1.0, 1.0, 1.0]
    assert weights("min_snr", False, snr_gamma=5) == pytest.approx([1.0, 1.0, 0.2])  # min(SNR,5)/SNR
    assert weights("debiased", False) == pytest.approx([2.0, 0.5, 0.2])  # 1/sqrt(SNR)
    assert weights("p2", False, p2_k=1, p2_gamma=1) == pytest.approx([0.8, 0.2, 1 / 26])  # 1/(1+SNR)
    assert weights("p2", False, p2_k=2, p2_gamma=0.5) == pytest.approx([1 / 1.5, 1 / 6 ** 0.5, 1 / 27 ** 0.5])


def test_timestep_weights_for_v_prediction_by_hand():
    # Ours: the epsilon weight x SNR/(SNR+1). Min-SNR: min(SNR,5)/(SNR+1), kohya's and the paper's form.
    assert weights("min_snr", True, snr_gamma=5) == pytest.approx([0.2, 0.8, 5 / 26])
    # Debiased: sqrt(SNR)/(SNR+1) (kohya uses 1/(SNR+1) here; see training.loss).
    assert weights("debiased", True) == pytest.approx([0.4, 0.4, 5 / 26])
    assert weights("p2", True, p2_k=1, p2_gamma=1) == pytest.approx([0.16, 0.16, 25 / 676])
    assert weights("constant", True) == [1.0, 1.0, 1.0]  # an unweighted v-loss stays the plain v-loss


def test_v_weighting_equals_the_epsilon_weighting_of_the_same_error():
    # |dv|^2 = |deps|^2 / abar: weighting the v error by w x SNR/(SNR+1) is weighting the eps error by w.
    abar = SNR / (1 + SNR)
    for kind in ("min_snr", "debiased", "p2"):
        eps_w = torch.tensor(weights(kind, False))
        v_w = torch.tensor(weights(kind, True))
        torch.testing.assert_close(v_w / abar, eps_w)


def test_distances_by_hand():
    pred, target = torch.tensor([0.3, 0.05]), torch.zeros(2)
    assert distance(pred, target, LossOptions()).tolist() == pytest.approx([0.09, 0.0025])
    # pseudo-Huber, c = 0.1: 2c (sqrt(d^2 + c^2) - c)
    assert distance(pred, target, LossOptions(loss_type="huber")).tolist() == pytest.approx(
        [0.2 * (0.1 ** 0.5 - 0.1), 0.2 * (0.0125 ** 0.5 - 0.1)])
    # smooth L1 x 2, beta 0.1: |d| - beta/2 above beta, d^2 / (2 beta) below
    assert distance(pred, target, LossOptions(loss_type="smooth_l1")).tolist() == pytest.approx([0.5, 0.025])


def test_weighted_and_masked_loss_by_hand():
    target = torch.zeros(2, 1, 1, 2)
    pred = torch.tensor([[[[1.0, 1.0]]], [[[2.0, 0.0]]]])  # squared errors: sample 0 [1, 1], sample 1 [4, 0]
    batch = Noised(target, torch.zeros(2), target, snr=torch.tensor([10.0, 2.5]))
    # min-SNR gamma 5: weights [0.5, 1]; per-sample means [1, 2] -> (0.5 + 2) / 2
    assert float(diffusion_loss(pred, batch, LossOptions(loss_weighting="min_snr"))) == pytest.approx(1.25)
    # A mask [1, 0] on sample 1 keeps its first pixel only: area-normalised mean 4, not 2.
    mask = torch.tensor([[[[1.0, 1.0]]], [[[1.0, 0.0]]]])
    assert float(diffusion_loss(pred, batch, LossOptions(), masks=mask)) == pytest.approx((1 + 4) / 2)
    # Without area normalisation: the mean over all pixels of the weighted errors, (4 + 0) / 2 = 2.
    plain = LossOptions(normalize_masked_area=False)
    assert float(diffusion_loss(pred, batch, plain, masks=mask)) == pytest.approx((1 + 2) / 2)
    # Unmasked weight 0.5: sample 1's weights [1, 0.5] -> normalised [4/3, 2/3] -> (4 * 4/3 + 0) / 2 = 8/3;
    # not normalised: (4 * 1 + 0 * 0.5) / 2 = 2.
    half = LossOptions(unmasked_weight=0.5)
    assert float(diffusion_loss(pred, batch, half, masks=mask)) == pytest.approx((1 + 8 / 3) / 2)
    assert float(diffusion_loss(pred, batch, half.model_copy(update={"normalize_masked_area": False}),
                                masks=mask)) == pytest.approx((1 + 2) / 2)
    # A mask of ones changes nothing.
    assert float(diffusion_loss(pred, batch, LossOptions(), masks=torch.ones(2, 1, 1, 2))) == pytest.approx(1.5)
    # The plain options are the plain float32 MSE, bit for bit.
    assert torch.equal(diffusion_loss(pred, batch, LossOptions()), diffusion_loss(pred, batch))


def test_noise_offset_is_a_per_channel_shift_drawn_after_the_timestep():
    noise, steps = noise_and_timesteps([7, 8], (4, 3, 3), 1000)
    shifted, same_steps = noise_and_timesteps([7, 8], (4, 3, 3), 1000, noise_offset=0.1)
    assert torch.equal(steps, same_steps)
    shift = shifted - noise  # (2, 4, 3, 3): constant over each channel's pixels
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift))
    assert 0 < float(shift.abs().max()) < 0.5


def test_noised_reports_each_samples_snr():
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012)
    out = noised(scheduler, torch.zeros(2, 4, 2, 2), [3, 4], "epsilon")
    abar = scheduler.alphas_cumprod[out.timesteps]
    torch.testing.assert_close(out.snr, abar / (1 - abar))
    assert not out.v_prediction and noised(scheduler, torch.zeros(1, 4, 2, 2), [3], "v_prediction").v_prediction
