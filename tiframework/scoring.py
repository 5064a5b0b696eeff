"""Scoring embeddings: during training (a Lightning callback) and afterwards (`tiframework eval`).

`Evaluator` generates images for the eval prompts with given vectors (fixed seeds) and
scores them with `evaluation.score_checkpoint`; rows go to `eval.csv` with the step-0
baseline (the init-text embedding) first, so gains are visible. `summarize` turns the
rows into `best_step`, `best_score` and `plateau_step`.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tiframework.callbacks import StepCallback
from tiframework.config import ExperimentConfig
from tiframework.evaluation import FIDELITY
from tiframework.fileio import atomic_path
from tiframework.models import SDParts

log = logging.getLogger(__name__)

# Extra scores for a run, e.g. the toy world's attribute accuracy: (fidelity images by prompt) -> scores.
ExtraScore = Callable[[dict[str, list[Any]]], dict[str, float]]


def _resolved_eval(cfg: ExperimentConfig, reference: str | None):
    from tiframework.train import resolve_data_path

    ref = reference or cfg.eval.reference
    if ref is None:
        return cfg.eval
    return cfg.eval.model_copy(update={"reference": str(resolve_data_path(ref, "eval.reference"))})


class Evaluator:
    """Loads the CLIP scorer and reference art once; `score(vectors, step)` gives one row."""

    def __init__(self, cfg: ExperimentConfig, parts: SDParts, reference: str | None = None,
                 extra: list[ExtraScore] | None = None):
        from tiframework.diagnostics import reference_stats
        from tiframework.evaluation import validate_eval_config
        from tiframework.preview import make_pipeline

        self.cfg, self.parts = cfg, parts
        self.eval_cfg = _resolved_eval(cfg, reference)
        # Validation runs before any training time is spent: prompts, model, weights, reference.
        self.scorer, reference_images = validate_eval_config(self.eval_cfg)
        self.reference_stats = reference_stats(reference_images)
        self.reference_features = self.scorer.image_features(reference_images)
        self.pipe = make_pipeline(parts, cfg.preview.sampler)
        self.extra = extra or []

    def _images(self, prompts: list[str], vectors: torch.Tensor) -> dict[str, list[Any]]:
        from tiframework.preview import generate

        e, p = self.eval_cfg, self.cfg.preview
        images = generate(self.parts, prompts, e.seeds, name=self.cfg.embedding.name, vectors=vectors,
                          clip_skip=self.cfg.model.clip_skip, steps=e.steps, guidance_scale=e.guidance_scale,
                          negative_prompt=p.negative_prompt, width=p.width, height=p.height, pipe=self.pipe)
        return dict(zip(prompts, images, strict=True))

    def score(self, vectors: torch.Tensor, step: int) -> dict[str, float]:
        from tiframework.diagnostics import fried_ratio, vector_norms
        from tiframework.evaluation import score_checkpoint

        vectors = vectors.detach().to(self.parts.unet.device)
        generated = self._images(list(self.eval_cfg.prompts), vectors)
        flex = self._images(list(self.eval_cfg.flexibility_prompts), vectors)
        row: dict[str, float] = {"step": step}
        row.update(score_checkpoint(self.scorer, self.reference_features, generated, flex))
        pooled = [img for imgs in generated.values() for img in imgs]
        row["eval/fried"] = fried_ratio(pooled, self.reference_stats)
        norms = vector_norms(vectors)
        row["eval/vector_norm"] = sum(norms) / len(norms)
        for extra in self.extra:
            row.update(extra(generated))
        return row


def append_row(rows: list[dict[str, float]], row: dict[str, float]) -> None:
    """Add an eval row, with the best fidelity so far as `eval/clip_fidelity_best`."""
    if FIDELITY in row:
        row[f"{FIDELITY}_best"] = max(r.get(FIDELITY, -math.inf) for r in [*rows, row])
    rows.append(row)


def write_eval_csv(path: Path, rows: list[dict[str, float]]) -> None:
    """The whole table, atomically (rows may gain columns as scores appear)."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def summarize(rows: list[dict[str, float]], cfg: ExperimentConfig, metric: str = FIDELITY) -> dict[str, Any]:
    """`best_step`, `best_score`, `plateau_step` (None when still rising) of a metric curve."""
    from tiframework.plateau import best, find_plateau, smooth

    points = [(r["step"], r[metric]) for r in rows if metric in r and math.isfinite(r[metric])]
    if not points:
        return {"best_step": None, "best_score": None, "plateau_step": None, "baseline_score": None}
    steps, scores = [p[0] for p in points], [p[1] for p in points]
    best_step, best_score = best(steps, scores)
    plateau = find_plateau(steps, smooth(scores, steps), cfg.eval.plateau_window, cfg.eval.plateau_epsilon)
    return {"metric": metric, "best_step": int(best_step), "best_score": best_score,
            "plateau_step": None if plateau is None else int(plateau), "baseline_score": scores[0]}


class EvalCallback(StepCallback):
    """Scores the embedding at the start and every `eval.every` steps; runs the diagnostics."""

    def __init__(self, evaluator: Evaluator, run_dir: Path, log_row: Callable[[dict], None], progress=None):
        self.evaluator, self.run_dir, self.log_row, self.progress = evaluator, run_dir, log_row, progress
        self.rows: list[dict[str, float]] = []
        self.warnings: list[str] = []
        self.stop_reason: str | None = None

    def evaluate(self, module, step: int) -> None:
        from tiframework.diagnostics import is_fried, learning_verdict

        cfg = module.cfg.eval
        row = self.evaluator.score(module.vectors, step)
        append_row(self.rows, row)
        write_eval_csv(self.run_dir / "eval.csv", self.rows)
        self.log_row(row)
        if self.progress is not None:
            self.progress.latest = row
        if is_fried(row["eval/fried"], cfg.fried_threshold):
            self.warn(f"previews look fried at step {step} (score {row['eval/fried']:.2f} > "
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

    def on_train_start(self, trainer, pl_module) -> None:
        self.evaluate(pl_module, pl_module.step)

    def on_step(self, trainer, module, step) -> None:
        max_norm = module.cfg.eval.max_vector_norm
        norm = max(module.vector_norms()) if max_norm is not None else None
        if norm is not None and norm > max_norm:
            self.stop_reason = f"vector norm {norm:.2f} exceeded eval.max_vector_norm at step {step}"
            self.warn(self.stop_reason)
            trainer.should_stop = True
        every = module.cfg.eval.every
        if every and step % every == 0:
            self.evaluate(module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.rows and self.rows[-1]["step"] != pl_module.step and pl_module.nonfinite_step is None:
            self.evaluate(pl_module, pl_module.step)


def checkpoints(run_dir: Path, name: str) -> list[tuple[int, Path]]:
    """`embeddings/<name>-<step>.pt` files of a run, by step."""
    found = []
    for path in (run_dir / "embeddings").glob(f"{name}-*.pt"):
        tail = path.stem[len(name) + 1 :]
        if tail.isdigit():
            found.append((int(tail), path))
    return sorted(found)


def evaluate_run(run_dir: Path, reference: str | None = None, overrides: list[str] | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Score every saved checkpoint of a finished run (plus the step-0 baseline) into eval.csv."""
    import json

    from tqdm.auto import tqdm

    from tiframework.config import load_config
    from tiframework.embeddings import create, load_embedding
    from tiframework.errors import UserError
    from tiframework.fileio import atomic_write_text
    from tiframework.models import load_model
    from tiframework.train import make_evaluator

    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml); give runs/<experiment>/<run-id>")
    cfg = load_config(config_file, overrides)
    found = checkpoints(run_dir, cfg.embedding.name)
    if not found:
        raise UserError(f"{run_dir}/embeddings: no {cfg.embedding.name}-<step>.pt checkpoints to score")
    parts = load_model(cfg.model)
    evaluator = make_evaluator(cfg, parts, reference=reference)
    if found[0][0] != 0:
        e = cfg.embedding
        found.insert(0, (0, create(e.name, e.init_text, e.vectors_per_token, parts).vectors))
    rows = []
    for step, source in tqdm(found, desc="scoring checkpoints", unit="ckpt", disable=not progress):
        vectors = source if isinstance(source, torch.Tensor) else load_embedding(source, parts.width).vectors
        append_row(rows, evaluator.score(vectors, step))
    write_eval_csv(run_dir / "eval.csv", rows)
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {"run_dir": str(run_dir)}
    summary.update(summarize(rows, cfg))
    atomic_write_text(summary_file, json.dumps(summary, indent=2) + "\n")
    return summary


def toyworld_attribute_scorer(spec: str) -> ExtraScore:
    """Attribute accuracy of the toy character's `[name]` images, by the toy world's classifier.

    Ground truth per generated image: `eval/attribute_accuracy` is the mean over the
    character's own traits (hair, eyes, outfit, accessories she wears).
    """
    from tiframework.toyworld.characters import parse_spec

    character = parse_spec(spec)[0]

    def score(generated: dict[str, list[Any]]) -> dict[str, float]:
        from tiframework.toyworld.classifier import attribute_accuracy

        images = generated.get("[name]") or [img for imgs in generated.values() for img in imgs]
        acc = attribute_accuracy(images, character)
        return {"eval/attribute_accuracy": acc["traits"], "eval/attribute_accuracy_all": acc["mean"]}

    return score
