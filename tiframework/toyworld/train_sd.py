"""Training the toy Stable Diffusion parts from seeds: VAE first, then UNet + text encoder.

The text encoder is trained jointly with the UNet (as in Imagen-style small LDMs):
on this world, a contrastively pre-trained encoder would add a phase and a model
without changing what TI needs, a frozen encoder whose token space the UNet reads.
"""

from __future__ import annotations

import copy
import random

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from tiframework.sd.text import tokenize
from tiframework.sd.tokenizer import VOCAB_SIZE, clip_tokenizer
from tiframework.toyworld.batches import fit, noisy_caption, world_batch
from tiframework.toyworld.nets import SCHEDULER_CONFIG, new_text_encoder, new_unet, new_vae


def train_vae(seconds: float, seed: int, batch: int = 12, kl_weight: float = 1e-5) -> tuple[torch.nn.Module, list[float]]:
    """Reconstruction (L1 + MSE) with a small KL: flat colours compress easily into 16x16x4."""
    torch.manual_seed(seed)
    rng = random.Random(f"vae:{seed}")
    vae = new_vae()
    with torch.no_grad():
        # Start the posterior narrow (std ~0.02): at the default logvar 0 the sampled
        # latents are mostly noise and the decoder learned nothing in a 100-step budget.
        vae.quant_conv.bias[vae.config.latent_channels:] = -8.0
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)

    def loss_fn(step: int) -> tuple[torch.Tensor, float]:
        x, _ = world_batch(rng, batch, exclude=())
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        return rec + kl_weight * post.kl().mean(), rec.item()

    losses = fit("vae", seconds, opt, loss_fn, clip=1.0)
    vae.eval().requires_grad_(False)
    vae.register_to_config(scaling_factor=latent_scaling(vae, seed))
    return vae, losses


@torch.no_grad()
def latent_scaling(vae, seed: int, n: int = 512) -> float:
    """1 / std of the latents, so scaled latents have unit variance like SD's 0.18215 gives."""
    x, _ = world_batch(random.Random(f"scale:{seed}"), n, exclude=())
    z = torch.cat([vae.encode(chunk).latent_dist.sample() for chunk in x.split(64)])
    return round(float(1.0 / z.std()), 5)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


def train_diffusion(vae, seconds: float, seed: int, batch: int = 32, lr: float = 1e-3,
                    tag_dropout: float = 0.3, caption_dropout: float = 0.1):
    """Epsilon-prediction LDM on SD's noise schedule, text encoder trained jointly.

    Min-SNR-5 loss weighting (Hang et al. 2023) converges markedly faster on tiny
    budgets; EMA weights are what we ship, since raw weights at lr 1e-3 are noisy.
    """

    torch.manual_seed(seed)
    rng = random.Random(f"diffusion:{seed}")
    unet, text_encoder = new_unet(), new_text_encoder()
    opt = torch.optim.AdamW([*unet.parameters(), *text_encoder.parameters()], lr=lr, weight_decay=0.0)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    sched = DDPMScheduler.from_config(SCHEDULER_CONFIG)
    alphas = sched.alphas_cumprod
    tokenizer, scale = clip_tokenizer(), vae.config.scaling_factor

    def loss_fn(step: int) -> tuple[torch.Tensor, float]:
        x, attrs = world_batch(rng, batch)
        with torch.no_grad():
            z0 = vae.encode(x).latent_dist.sample() * scale  # (B, 4, 16, 16)
        ids = tokenize(tokenizer, [noisy_caption(a, rng, tag_dropout, caption_dropout) for a in attrs],
                       None, 0, VOCAB_SIZE)
        noise = torch.randn_like(z0)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,))
        cond = text_encoder(ids).last_hidden_state  # (B, 77, 64)
        pred = unet(sched.add_noise(z0, noise, t), t, cond).sample
        snr = alphas[t] / (1 - alphas[t])
        weight = snr.clamp(max=5.0) / snr
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        return loss, float(F.mse_loss(pred.detach(), noise))

    def ema(step: int) -> None:
        decay = min(0.998, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)

    losses = fit("unet+text", seconds, opt, loss_fn, warmup=100, clip=1.0, after_step=ema)
    return ema_unet.eval(), ema_text.eval(), losses
