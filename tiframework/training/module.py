"""The textual-inversion LightningModule.

The frozen UNet / text encoder / VAE live in `self.parts`, an `SDParts` dataclass, so
they are not registered submodules: `state_dict()` and Lightning checkpoints hold only
the trained vectors (and the optimizer state), never the frozen model.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from tiframework.config import ExperimentConfig
from tiframework.evaluation.diagnostics import NonFiniteLoss, check_loss
from tiframework.sd.embeddings import vector_norms
from tiframework.sd.models import SDParts
from tiframework.sd.text import encode_prompts
from tiframework.training.schedules import cosine_restarts_rate, parse_schedule, rate_at

log = logging.getLogger(__name__)


class TextualInversionModule(pl.LightningModule):
    """The training step. The frozen parts must already be placed (`SDParts.prepare`):
    the module trains the vectors and nothing else; `compile_unet` runs the UNet through
    `torch.compile` in training steps (previews and evaluation use the plain module)."""

    def __init__(self, cfg: ExperimentConfig, parts: SDParts, init_vectors: torch.Tensor,
                 start_step: int = 0, optimizer_state: dict | None = None, compile_unet: bool = False):
        super().__init__()
        self.cfg = cfg
        self.parts = parts
        # The frozen UNet's call (compiled or not): a bound method, not a submodule, so
        # state_dict() still holds only the vectors.
        self.run_unet = (torch.compile(parts.unet) if compile_unet else parts.unet).__call__
        # float32 whatever the frozen weights are: AdamW's moments follow the parameter's dtype.
        self.vectors = torch.nn.Parameter(init_vectors.detach().clone().float())  # (VPT, width)
        self.start_step = start_step
        self.optimizer_state = optimizer_state
        self.schedule = parse_schedule(cfg.training.learning_rate)
        self.noise_scheduler = parts.noise_scheduler()
        self.nonfinite_step: int | None = None
        self.last_loss = float("nan")

    # --- steps and rates ------------------------------------------------------------------

    @property
    def step(self) -> int:
        """Optimizer steps completed, counting those before a resume (A1111's step)."""
        return self.start_step + self.global_step

    def lr_at(self, step: int) -> float:
        t = self.cfg.training
        if t.lr_scheduler == "cosine_restarts":
            return cosine_restarts_rate(self.schedule[0].rate, step, t.cosine_cycle_steps, t.cosine_cycle_mult)
        return rate_at(self.schedule, step)

    def configure_optimizers(self):
        t = self.cfg.training
        # Only the new vectors: AdamW over the whole embedding matrix would decay frozen rows.
        opt = torch.optim.AdamW([self.vectors], lr=self.lr_at(self.start_step), weight_decay=t.weight_decay)
        if self.optimizer_state is not None:
            opt.load_state_dict(self.optimizer_state)
        return opt

    def on_train_batch_start(self, batch, batch_idx) -> None:
        for group in self.optimizers().optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)

    # --- the loss -------------------------------------------------------------------------

    def noise_loss(self, batch: dict) -> torch.Tensor:
        latents = batch["latents"].to(self.device)  # (B, 4, h, w)
        unet_dtype = next(self.parts.unet.parameters()).dtype
        # Noise and timesteps come from each sample's seed, so resumed runs replay them.
        gens = [torch.Generator().manual_seed(int(s) + 1) for s in batch["seeds"]]
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in gens]).to(self.device)
        steps = torch.tensor(
            [int(torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (1,), generator=g)) for g in gens],
            device=self.device,
        )
        noisy = self.noise_scheduler.add_noise(latents, noise, steps)
        cond = encode_prompts(self.parts, batch["prompts"], self.cfg.model.clip_skip,
                              self.cfg.embedding.name, self.vectors)  # (B, 77*chunks, width)
        pred = self.run_unet(noisy.to(unet_dtype), steps, cond.to(unet_dtype)).sample
        if self.parts.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, steps)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float())

    def training_step(self, batch: dict, batch_idx: int):
        loss = self.noise_loss(batch)
        try:
            self.last_loss = check_loss(loss, self.step)
        except NonFiniteLoss as exc:
            # Returning None skips backward and the optimizer step, so the vectors stay the
            # last good ones; the train loop stops and says so.
            self.nonfinite_step = self.step
            self.trainer.should_stop = True
            log.error("%s; stopping, the last good embedding is kept", exc)
            return None
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=False, batch_size=len(batch["prompts"]))
        return loss

    # --- what is saved --------------------------------------------------------------------

    def vector_norms(self) -> list[float]:
        return vector_norms(self.vectors)
