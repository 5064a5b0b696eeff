"""Lightning callbacks that write the run folder: embeddings, previews, metrics, progress.

All of them act on optimizer steps (A1111's step counter), not on micro-batches.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from tiframework.module import TextualInversionModule

log = logging.getLogger(__name__)


def optimizer_step_done(trainer: pl.Trainer, batch_idx: int) -> bool:
    """True on the micro-batch that completed an optimizer step."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0


class StepCallback(pl.Callback):
    """Calls `on_step(trainer, module, step)` after each optimizer step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if optimizer_step_done(trainer, batch_idx) and pl_module.nonfinite_step is None:
            self.on_step(trainer, pl_module, pl_module.step)

    def on_step(self, trainer: pl.Trainer, module: TextualInversionModule, step: int) -> None:
        raise NotImplementedError


class EmbeddingSaver(StepCallback):
    """`<name>-<step>.pt` + `.safetensors` every `every` steps, optimizer state beside them.

    The optimizer state goes to `<file>.optim` as A1111 does, so A1111 can resume from
    our files and we from theirs.
    """

    def __init__(self, folder: Path, every: int, checkpoint_hash: str | None, checkpoint_name: str):
        self.folder, self.every = folder, every
        self.checkpoint_hash, self.checkpoint_name = checkpoint_hash, checkpoint_name
        self.saved: list[Path] = []

    def save(self, module: TextualInversionModule, step: int, stem: str) -> Path:
        from tiframework.embeddings import Embedding, save_embedding
        from tiframework.fileio import atomic_path

        emb = Embedding(name=module.cfg.embedding.name, vectors=module.vectors.detach().float().cpu().clone(),
                        step=step, sd_checkpoint=self.checkpoint_hash, sd_checkpoint_name=self.checkpoint_name)
        pt = self.folder / f"{stem}.pt"
        save_embedding(emb, pt)
        save_embedding(emb, self.folder / f"{stem}.safetensors")
        optimizers = module.trainer.optimizers if module._trainer is not None else []
        if optimizers:
            with atomic_path(pt.with_name(pt.name + ".optim")) as tmp:
                torch.save({"step": step, "optimizer_state_dict": optimizers[0].state_dict()}, tmp)
        self.saved.append(pt)
        return pt

    def on_step(self, trainer, module, step) -> None:
        if self.every and step % self.every == 0:
            self.save(module, step, f"{module.cfg.embedding.name}-{step}")


class PreviewWriter(StepCallback):
    """Preview images every `every` steps (and at step 0), fixed prompts and seeds."""

    def __init__(self, folder: Path, every: int, prompts: list[str], hook=None):
        self.folder, self.every, self.prompts = folder, every, prompts
        self.hook = hook  # called with (step, prompts, images): W&B logging
        self.pipe = None

    def render(self, module: TextualInversionModule, step: int) -> None:
        from tiframework.preview import generate, make_pipeline, save_previews

        c = module.cfg.preview
        self.pipe = self.pipe or make_pipeline(module.parts, c.sampler)
        images = generate(
            module.parts, self.prompts, c.seeds, name=module.cfg.embedding.name, vectors=module.vectors.detach(),
            clip_skip=module.cfg.model.clip_skip, steps=c.steps, guidance_scale=c.guidance_scale,
            negative_prompt=c.negative_prompt, width=c.width, height=c.height, pipe=self.pipe,
        )
        save_previews(images, self.folder, step)
        if self.hook:
            self.hook(step, self.prompts, images)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.every and pl_module.step == 0:
            self.render(pl_module, 0)

    def on_step(self, trainer, module, step) -> None:
        if self.every and step % self.every == 0:
            self.render(module, step)


class MetricsCSV(StepCallback):
    """Appends one row per optimizer step to metrics.csv, flushed at once (crash-safe)."""

    FIELDS = ["step", "loss", "lr", "vector_norm", "time"]

    def __init__(self, path: Path):
        self.path = path
        self.start = time.monotonic()
        self.losses: list[float] = []
        self.file = None
        self.writer: Any = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.monotonic()
        new = not self.path.exists()
        self.file = self.path.open("a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        if new:
            self.writer.writeheader()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if outputs is not None:
            self.losses.append(pl_module.last_loss)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_step(self, trainer, module, step) -> None:
        loss = sum(self.losses) / max(1, len(self.losses))  # mean over the accumulated micro-batches
        self.losses.clear()
        norms = module.vector_norms()
        row = {"step": step, "loss": f"{loss:.6g}", "lr": f"{module.lr_at(step - 1):.6g}",
               "vector_norm": f"{sum(norms) / len(norms):.6g}", "time": f"{time.monotonic() - self.start:.3f}"}
        self.writer.writerow(row)
        self.file.flush()
        module.log_dict({"train/lr": module.lr_at(step - 1), "train/vector_norm": sum(norms) / len(norms),
                         "train/step": float(step)}, on_step=True)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.file:
            self.file.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_train_end(trainer, pl_module)


class StepProgress(StepCallback):
    """A tqdm bar over optimizer steps with loss, lr and the latest fidelity."""

    def __init__(self, total: int, start: int):
        self.total, self.start = total, start
        self.bar = None
        self.latest: dict[str, float] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=self.start, desc="training", unit="step", dynamic_ncols=True)

    def on_step(self, trainer, module, step) -> None:
        post = {"loss": f"{module.last_loss:.4f}", "lr": f"{module.lr_at(step - 1):.2g}"}
        if "eval/clip_fidelity" in self.latest:
            post["fidelity"] = f"{self.latest['eval/clip_fidelity']:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar:
            self.bar.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_train_end(trainer, pl_module)
