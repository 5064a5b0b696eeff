"""Lightning callbacks of a run: saves, previews, metrics, evaluation, guards, progress.

All of them act on optimizer steps (A1111's step counter), not on micro-batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from tqdm.auto import tqdm

from tiframework.config import EvalConfig, ExperimentConfig
from tiframework.evaluation.columns import FIDELITY
from tiframework.evaluation.diagnostics import ExplodingEmbedding, check_vector_norms
from tiframework.evaluation.evaluator import Evaluator
from tiframework.sd.embeddings import Embedding, save_embedding
from tiframework.sd.generate import generate, make_pipeline
from tiframework.sd.models import SDParts
from tiframework.sd.optimizer_state import save_optimizer_state
from tiframework.tracking.runfolder import RunFolder
from tiframework.training.module import TextualInversionModule
from tiframework.training.previews import save_previews
from tiframework.training.run_eval import RunEvaluation

log = logging.getLogger(__name__)


def optimizer_of(module: TextualInversionModule) -> torch.optim.Optimizer | None:
    """The run's AdamW (None before Lightning set it up): its state is saved beside the vectors."""
    optimizers = module.trainer.optimizers if module._trainer is not None else []
    return optimizers[0] if optimizers else None


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

    As A1111 does: the name inside an intermediate file is `<name>-<step>` (so checkpoints
    of one run load side by side in one diffusers pipeline), the final file keeps `<name>`,
    and the optimizer state goes to `<file>.optim` with A1111's hash of the vectors, so
    A1111 can resume from our files and we from theirs. The `.pt` is written last: a run
    killed mid-save leaves no `.pt` whose `.optim` is missing.
    """

    def __init__(self, folder: Path, every: int, checkpoint_hash: str | None, checkpoint_name: str):
        self.folder, self.every = folder, every
        self.checkpoint_hash, self.checkpoint_name = checkpoint_hash, checkpoint_name
        self.saved: list[Path] = []

    def save(self, module: TextualInversionModule, step: int, stem: str) -> Path:
        return self.save_vectors(module.output, optimizer_of(module), step, stem, module.trained)

    def save_vectors(self, vectors: torch.Tensor, optimizer: torch.optim.Optimizer | None, step: int,
                     stem: str, trained: torch.Tensor | None = None) -> Path:
        """`<stem>.pt` + `.safetensors` (+ `<stem>.pt.optim` with `optimizer`'s state, and the `trained`
        vectors when `vectors` are their EMA, so a resume goes on exactly); the `.pt` path."""
        emb = Embedding(name=stem, vectors=vectors.detach().float().cpu().clone(),
                        step=step, sd_checkpoint=self.checkpoint_hash, sd_checkpoint_name=self.checkpoint_name)
        pt = self.folder / f"{stem}.pt"
        if optimizer is not None:
            save_optimizer_state(pt, emb.vectors, optimizer.state_dict(), step, trained)
        save_embedding(emb, self.folder / f"{stem}.safetensors")
        save_embedding(emb, pt)
        self.saved.append(pt)
        return pt

    def save_final(self, vectors: torch.Tensor, optimizer: torch.optim.Optimizer | None, step: int,
                   name: str, trained: torch.Tensor | None = None) -> Path:
        """The end of a run: `<name>-<step>` unless already saved at that step, then `<name>`."""
        if not self.saved or self.saved[-1].stem != f"{name}-{step}":
            self.save_vectors(vectors, optimizer, step, f"{name}-{step}", trained)
        return self.save_vectors(vectors, optimizer, step, name, trained)

    def keep(self, vectors: torch.Tensor, optimizer: torch.optim.Optimizer | None, step: int, name: str,
             trained: torch.Tensor | None = None) -> Path:
        """The checkpoint of `step`, which must exist whatever `every` says (the best one): one
        already on disk (saved at this step, or the file a resume started from) stays."""
        path = self.folder / f"{name}-{step}.pt"
        return path if path.is_file() else self.save_vectors(vectors, optimizer, step, path.stem, trained)

    def on_step(self, trainer, module, step) -> None:
        if self.every and step % self.every == 0:
            self.save(module, step, f"{module.cfg.embedding.name}-{step}")


class PreviewWriter(StepCallback):
    """Preview images every `every` steps (and at step 0), fixed prompts and seeds."""

    def __init__(self, folder: Path, every: int, prompts: list[str],
                 hook: Callable[[int, list[str], list[list[Any]]], None] | None = None):
        self.folder, self.every, self.prompts = folder, every, prompts
        self.hook = hook  # called with (step, prompts, images): W&B logging
        self.pipe = None

    def render(self, module: TextualInversionModule, step: int) -> None:
        self.render_vectors(module.parts, module.cfg, module.output, step)

    def render_vectors(self, parts: SDParts, cfg: ExperimentConfig, vectors: torch.Tensor, step: int) -> None:
        """The previews of `vectors` at `step` (a population renders each member's with its own writer)."""
        c = cfg.preview
        self.pipe = self.pipe or make_pipeline(parts, c.sampler)
        images = generate(
            parts, self.prompts, c.seeds, name=cfg.embedding.name, vectors=vectors.detach(),
            clip_skip=cfg.model.clip_skip, steps=c.steps, guidance_scale=c.guidance_scale,
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
    """One metrics.csv row per optimizer step: loss (mean over the accumulated micro-batches), lr, norm."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.start = time.monotonic()
        self.losses: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if outputs is not None:
            self.losses.append(pl_module.last_loss)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_step(self, trainer, module, step) -> None:
        loss = sum(self.losses) / max(1, len(self.losses))
        self.losses.clear()
        norms = module.vector_norms()
        norm, lr = sum(norms) / len(norms), module.lr_at(step - 1)
        self.folder.append_metrics({"step": step, "loss": f"{loss:.6g}", "lr": f"{lr:.6g}",
                                    "vector_norm": f"{norm:.6g}", "time": f"{time.monotonic() - self.start:.3f}"})
        module.log_dict({"train/lr": lr, "train/vector_norm": norm, "train/step": float(step)}, on_step=True)


class VectorGuard(StepCallback):
    """Stops a run whose vectors turn non-finite or pass `eval.max_vector_norm`."""

    def __init__(self, max_norm: float | None):
        self.max_norm = max_norm
        self.stop_reason: str | None = None

    def on_step(self, trainer, module, step) -> None:
        try:
            check_vector_norms(module.vectors, self.max_norm, step)
        except ExplodingEmbedding as exc:
            self.stop_reason = str(exc)
            log.warning(self.stop_reason)
            trainer.should_stop = True


class EvalCallback(StepCallback):
    """Scores the embedding at the start and every `eval.every` steps with an `Evaluator`;
    what each row does (eval files, sink, best checkpoint, diagnostics, plateau stop) is
    `run_eval.RunEvaluation`'s, which a population member's evaluation shares.

    `keep(module, step)` saves the embedding of `step` when it becomes the best on the
    selection seeds. With `stop_on_plateau`, training stops at the evaluation that
    confirms the fidelity plateau.
    """

    def __init__(self, evaluator: Evaluator, folder: RunFolder, sink: Callable[[dict[str, float]], None],
                 keep: Callable[[TextualInversionModule, int], Path] | None = None,
                 stop_on_plateau: bool = False, planned_steps: int | None = None):
        self.record = RunEvaluation(evaluator, folder, sink, stop_on_plateau, planned_steps)
        self.evaluator, self.keep = evaluator, keep

    @property
    def cfg(self) -> EvalConfig:
        return self.record.cfg

    def evaluate(self, module: TextualInversionModule, step: int) -> None:
        row = self.evaluator.score(module.output, step)
        keep = (lambda s: self.keep(module, s)) if self.keep is not None else None
        if self.record.record(row, step, keep, can_stop=module._trainer is not None):
            module.trainer.should_stop = True

    def summary(self) -> dict[str, Any]:
        return self.record.summary()

    def continue_curve(self, rows: list[dict[str, float]], per_image: list[dict[str, Any]],
                       embeddings: Path, name: str) -> None:
        self.record.continue_curve(rows, per_image, embeddings, name)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.record.due_at_start(pl_module.step):  # a resumed run may have this row
            self.evaluate(pl_module, pl_module.step)

    def on_step(self, trainer, module, step) -> None:
        if self.record.due(step):
            self.evaluate(module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.record.due_at_end(pl_module.step) and pl_module.nonfinite_step is None:
            self.evaluate(pl_module, pl_module.step)


class StepProgress(StepCallback):
    """A tqdm bar over optimizer steps with loss, lr and the latest fidelity."""

    def __init__(self, total: int, start: int):
        self.total, self.start = total, start
        self.bar = None
        self.latest: dict[str, float] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.bar = tqdm(total=self.total, initial=self.start, desc="training", unit="step", dynamic_ncols=True)

    def on_step(self, trainer, module, step) -> None:
        post = {"loss": f"{module.last_loss:.4f}", "lr": f"{module.lr_at(step - 1):.2g}"}
        if FIDELITY in self.latest:
            post["fidelity"] = f"{self.latest[FIDELITY]:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar:
            self.bar.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_train_end(trainer, pl_module)
