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
from tqdm.auto import tqdm

from tiframework.config import EvalConfig
from tiframework.evaluation.diagnostics import (
    ExplodingEmbedding,
    check_vector_norms,
    is_fried,
    learning_verdict,
)
from tiframework.evaluation.evaluator import Evaluator
from tiframework.evaluation.evidence import save_eval_images
from tiframework.evaluation.metrics import FIDELITY
from tiframework.evaluation.summary import append_row, best_row, curve_plateau, samples_by_step, summarize
from tiframework.sd.embeddings import Embedding, save_embedding
from tiframework.sd.generate import generate, make_pipeline
from tiframework.sd.optimizer_state import save_optimizer_state
from tiframework.tracking.runfolder import RunFolder
from tiframework.training.module import TextualInversionModule
from tiframework.training.previews import save_previews

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
        emb = Embedding(name=stem, vectors=module.vectors.detach().float().cpu().clone(),
                        step=step, sd_checkpoint=self.checkpoint_hash, sd_checkpoint_name=self.checkpoint_name)
        pt = self.folder / f"{stem}.pt"
        optimizers = module.trainer.optimizers if module._trainer is not None else []
        if optimizers:
            save_optimizer_state(pt, emb.vectors, optimizers[0].state_dict(), step)
        save_embedding(emb, self.folder / f"{stem}.safetensors")
        save_embedding(emb, pt)
        self.saved.append(pt)
        return pt

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
    """Scores the embedding at the start and every `eval.every` steps with an `Evaluator`,
    writes eval.csv and `eval_images/`, hands each row to `sink`, and runs the fried /
    not-learning diagnostics.

    `keep(module, step)` is called when a checkpoint becomes the best on the selection seeds,
    so its embedding is saved even where `training.save_every` would not save it. With
    `stop_on_plateau`, training stops at the evaluation that confirms the fidelity plateau.
    """

    def __init__(self, evaluator: Evaluator, folder: RunFolder, sink: Callable[[dict[str, float]], None],
                 keep: Callable[[TextualInversionModule, int], Path] | None = None,
                 stop_on_plateau: bool = False, planned_steps: int | None = None):
        self.evaluator, self.folder, self.sink = evaluator, folder, sink
        self.keep, self.stop_on_plateau, self.planned_steps = keep, stop_on_plateau, planned_steps
        self.rows: list[dict[str, float]] = []
        self.per_image: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.best_step: int | None = None
        self.best_embedding: Path | None = None
        self.stopped_on_plateau: dict[str, int] | None = None

    @property
    def cfg(self) -> EvalConfig:
        return self.evaluator.eval_cfg

    def evaluate(self, module: TextualInversionModule, step: int) -> None:
        row = self.evaluator.score(module.vectors, step)
        append_row(self.rows, row)
        self.per_image += self.evaluator.last_per_image
        self.folder.write_eval(self.rows)
        self.folder.write_per_image(self.per_image)
        save_eval_images(self.evaluator.last_images, self.folder.eval_images, step)
        self.sink(row)
        self._keep_best(module)
        self._diagnose(row, step)
        if self.stop_on_plateau:
            self._stop_if_plateau(module, step)

    def _keep_best(self, module: TextualInversionModule) -> None:
        chosen = best_row(self.rows)
        if chosen is None or int(chosen["step"]) == self.best_step:
            return
        self.best_step = int(chosen["step"])
        if self.keep is not None:
            self.best_embedding = self.keep(module, self.best_step)

    def _stop_if_plateau(self, module: TextualInversionModule, step: int) -> None:
        if self.planned_steps is not None and step >= self.planned_steps:
            return  # the run ends here anyway: nothing to stop, nothing saved
        plateau = curve_plateau(self.rows, self.cfg, samples=samples_by_step(self.per_image))
        if plateau is None or plateau.reason != "plateau" or module._trainer is None:
            return
        saved = (self.planned_steps or step) - step
        self.stopped_on_plateau = {"at_step": step, "plateau_step": int(plateau.step), "steps_saved": saved}
        log.info("fidelity plateaued at step %d (confirmed at %d, noise %.4f): stopping, %d planned steps saved",
                 plateau.step, step, plateau.noise, saved)
        module.trainer.should_stop = True

    def _diagnose(self, row: dict[str, float], step: int) -> None:
        cfg = self.cfg
        if is_fried(row["eval/fried"], cfg.fried_threshold):
            self.warn(f"eval images look fried at step {step} (score {row['eval/fried']:.2f} > "
                      f"{cfg.fried_threshold}): wrong VAE or model, or a learning rate far too high")
        base = self.rows[0].get(FIDELITY)
        if (cfg.verdict_after and step >= cfg.verdict_after and FIDELITY in row and base is not None
                and not any("not learning" in w for w in self.warnings)):
            verdict = learning_verdict(base, row[FIDELITY], cfg.verdict_margin, step)
            if verdict:
                self.warn(verdict)

    def warn(self, text: str) -> None:
        log.warning(text)
        self.warnings.append(text)

    def summary(self) -> dict[str, Any]:
        """Best (chosen on the selection seeds) and plateau of CLIP fidelity, the best
        checkpoint's file, a plateau stop, and the diagnostics' warnings."""
        out = summarize(self.rows, self.cfg, samples=samples_by_step(self.per_image))
        out["warnings"] = list(self.warnings)
        if self.best_embedding is not None and out.get("best_step") == self.best_step:
            out["best_embedding"] = str(self.best_embedding)
        out["stopped_on_plateau"] = self.stopped_on_plateau
        return out

    def continue_curve(self, rows: list[dict[str, float]], per_image: list[dict[str, Any]],
                       embeddings: Path, name: str) -> None:
        """A run resumed in its own folder: its curve goes on from the rows it kept."""
        self.rows, self.per_image = list(rows), list(per_image)
        chosen = best_row(self.rows)
        if chosen is not None:
            self.best_step = int(chosen["step"])
            found = embeddings / f"{name}-{self.best_step}.pt"
            self.best_embedding = found if found.is_file() else None

    def on_train_start(self, trainer, pl_module) -> None:
        if not (self.rows and self.rows[-1]["step"] == pl_module.step):  # a resumed run may have this row
            self.evaluate(pl_module, pl_module.step)

    def on_step(self, trainer, module, step) -> None:
        if self.cfg.every and step % self.cfg.every == 0:
            self.evaluate(module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.rows and self.rows[-1]["step"] != pl_module.step and pl_module.nonfinite_step is None:
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
