"""The textual-inversion LightningModule.

The frozen UNet / text encoder / VAE live in `self.parts`, an `SDParts` dataclass, so
they are not registered submodules: `state_dict()` and Lightning checkpoints hold only
the trained vectors (and the optimizer state), never the frozen model.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

from tiframework.config import ExperimentConfig
from tiframework.evaluation.diagnostics import NonFiniteLoss, check_loss
from tiframework.sd.models import SDParts
from tiframework.sd.text import encode_prompts
from tiframework.training.loss import diffusion_loss, noised
from tiframework.training.regularise import EmbeddingVectors, NormControl, VectorEMA, token_rows
from tiframework.training.schedules import learning_rate

log = logging.getLogger(__name__)


class TextualInversionModule(EmbeddingVectors, pl.LightningModule):
    """The training step. The frozen parts must already be placed (`SDParts.prepare`):
    the module trains the vectors and nothing else; `compile_unet` runs the UNet through
    `torch.compile` in training steps (previews and evaluation use the plain module).
    `init`: the embedding's init vectors (norm control's reference), default `init_vectors`
    (a resumed run passes its init text's vectors here and its saved ones as `init_vectors`);
    `ema_average`: a resumed EMA run's saved average. What is saved (`output`, `trained`,
    `vector_norms()`) is `regularise.EmbeddingVectors`', as for a population member."""

    def __init__(self, cfg: ExperimentConfig, parts: SDParts, init_vectors: torch.Tensor,
                 start_step: int = 0, optimizer_state: dict | None = None, compile_unet: bool = False,
                 init: torch.Tensor | None = None, ema_average: torch.Tensor | None = None):
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
        self.noise_scheduler = parts.noise_scheduler()
        self.nonfinite_step: int | None = None
        self.last_loss = float("nan")
        reference = (init if init is not None else init_vectors).detach().float().clone()
        self.norm_control = NormControl(cfg.embedding, reference, token_rows(parts))
        self.ema = VectorEMA(cfg.training, self.vectors, ema_average)

    # --- steps and rates ------------------------------------------------------------------

    @property
    def step(self) -> int:
        """Optimizer steps completed, counting those before a resume (A1111's step)."""
        return self.start_step + self.global_step

    def lr_at(self, step: int) -> float:
        return learning_rate(self.cfg.training, step)

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

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.nonfinite_step is None:  # a skipped step moved nothing: nothing to hold or average
            # Lightning counts the step only after this hook returns: the one just taken is step + 1.
            self.norm_control.after_step(self.vectors.data, optimizer.param_groups[0]["lr"])
            self.ema.update(self.vectors, self.step + 1)

    # --- the loss -------------------------------------------------------------------------

    def noise_loss(self, batch: dict) -> torch.Tensor:
        """The micro-batch's loss (`training.loss`), noise and timesteps from each sample's seed."""
        latents = batch["latents"].to(self.device)  # (B, 4, h, w)
        unet_dtype = next(self.parts.unet.parameters()).dtype
        t = self.cfg.training
        target = noised(self.noise_scheduler, latents, batch["seeds"], self.parts.prediction_type, t.noise_offset)
        cond = encode_prompts(self.parts, batch["prompts"], self.cfg.model.clip_skip,
                              self.cfg.embedding.name, self.vectors)  # (B, 77*chunks, width)
        pred = self.run_unet(target.noisy.to(unet_dtype), target.timesteps, cond.to(unet_dtype)).sample
        loss = diffusion_loss(pred, target, t, batch.get("masks"))
        penalty = self.norm_control.penalty(self.vectors)
        return loss if penalty is None else loss + penalty

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
