"""`Evaluator`: images from the eval prompts for given vectors, scored into one eval row.

It loads the CLIP scorer, the reference art (and the tagger, with `eval.tagger`) once, then
`score(vectors, step)` generates images with fixed seeds (`eval.*` generation settings,
independent of previews) and returns `{"step": ..., "eval/clip_fidelity": ..., ...}`:

- `eval/*` scores (each image-averaged one with its standard error, `_se`) on the
  held-out seeds `eval.seeds`: fidelity, flexibility, trait recall / leak, fried, norm;
- `select/clip_fidelity` (+ `_se`) on the disjoint selection seeds (`EvalConfig.selection()`,
  fidelity prompts only): it chooses the best checkpoint, so the held-out scores of that
  checkpoint are not inflated by the choice.

Training wraps it in a callback; `tiframework eval` calls it for each saved checkpoint.
With a toy-world character (reference art or data) the row also holds
`eval/attribute_accuracy`, the toy world's ground truth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tiframework.config import EvalConfig, ExperimentConfig
from tiframework.data.sources import resolve_data_path
from tiframework.evaluation.columns import FIDELITY
from tiframework.evaluation.diagnostics import fried_ratio, reference_stats, vector_norms
from tiframework.evaluation.metrics import fidelity_scores, flexibility_scores, validate_eval_config
from tiframework.evaluation.noise import mean_se, se_key
from tiframework.evaluation.summary import SELECT
from tiframework.evaluation.traits import load_trait_scorer
from tiframework.sd.generate import ImageRequest, generate, make_pipeline
from tiframework.sd.models import SDParts
from tiframework.toyworld import clip as toy_clip
from tiframework.toyworld.characters import is_spec, parse_spec
from tiframework.toyworld.classifier import attribute_scores

# Extra scores for a run, e.g. the toy world's attribute accuracy:
# (fidelity images by prompt, flexibility images by prompt), both held-out -> scores.
ExtraScore = Callable[[dict[str, list[Any]], dict[str, list[Any]]], dict[str, float]]
ATTRIBUTE_ACCURACY = "eval/attribute_accuracy"


def resolved_eval(cfg: ExperimentConfig, reference: str | None = None) -> EvalConfig:
    """The eval section with `reference` (or `eval.reference`) resolved to a folder,
    `clip_pretrained: toyworld` to the toy CLIP's weights file, and the seeds this run's
    training seed is scored on (`eval.seeds_follow_training_seed`)."""
    update: dict[str, Any] = {"clip_pretrained": toy_clip.resolve_weights(cfg.eval.clip_pretrained)}
    ref = reference or cfg.eval.reference
    if ref is not None:
        update["reference"] = str(resolve_data_path(ref, "eval.reference"))
    return cfg.eval.for_training_seed(cfg.training.seed).model_copy(update=update)


class Evaluator:
    """Loads the CLIP scorer and reference art once; `score(vectors, step)` gives one row."""

    def __init__(self, cfg: ExperimentConfig, parts: SDParts, reference: str | None = None,
                 extra: list[ExtraScore] | None = None, device: str | torch.device = "cpu"):
        self.cfg, self.parts = cfg, parts
        self.eval_cfg = resolved_eval(cfg, reference)
        # Validation runs before any training time is spent: prompts, model, weights, reference.
        self.scorer, reference_images = validate_eval_config(self.eval_cfg, device)
        self.reference_stats = reference_stats(reference_images)
        self.reference_features = self.scorer.image_features(reference_images)
        self.traits = load_trait_scorer(self.eval_cfg, cfg.data.path, device)
        self.pipe = make_pipeline(parts, self.eval_cfg.sampler)
        self.extra = extra or []
        # The held-out images of the first fidelity prompt at the last `score`, seeds in order:
        # what a person looks at (eval_images/step-<step>.png).
        self.last_images: list[Any] = []
        # Each held-out image's fidelity at the last `score` ({step, prompt, seed, value}), in
        # order: the same seeds at every checkpoint, so differences pair up image by image.
        self.last_per_image: list[dict[str, Any]] = []

    def requests(self, vectors: torch.Tensor) -> list[ImageRequest]:
        """The images one evaluation needs: held-out fidelity, flexibility, then selection,
        one request per prompt (`score_images` takes them back in this order)."""
        e, c = self.eval_cfg, self.cfg
        vectors = vectors.detach().to(self.parts.unet.device)

        def each(prompts: list[str], seeds: list[int]) -> list[ImageRequest]:
            return [ImageRequest(p, list(seeds), c.embedding.name, vectors, c.model.clip_skip) for p in prompts]

        return each(list(e.prompts), list(e.seeds)) + each(list(e.flexibility_prompts), list(e.seeds)) + \
            each(list(e.prompts), e.selection())

    def generation(self) -> dict[str, Any]:
        """The `eval.*` generation settings (requests with equal settings can share sampler calls)."""
        e = self.eval_cfg
        return {"sampler": e.sampler, "steps": e.steps, "guidance_scale": e.guidance_scale,
                "negative_prompt": e.negative_prompt, "width": e.width, "height": e.height}

    def score(self, vectors: torch.Tensor, step: int) -> dict[str, float]:
        """Generate this evaluation's images (one sampler call per prompt) and score them."""
        settings = {k: v for k, v in self.generation().items() if k != "sampler"}
        images = [generate(self.parts, [r.prompt], r.seeds, name=r.name, vectors=r.vectors, clip_skip=r.clip_skip,
                           pipe=self.pipe, **settings)[0] for r in self.requests(vectors)]
        return self.score_images(images, vectors, step)

    def score_images(self, images: list[list[Any]], vectors: torch.Tensor, step: int) -> dict[str, float]:
        """The row for `step` from the images of `requests(vectors)`, in that order; also
        sets `last_images` and `last_per_image`."""
        e = self.eval_cfg
        fid, flex_prompts = list(e.prompts), list(e.flexibility_prompts)
        generated = dict(zip(fid, images[:len(fid)], strict=True))
        flex = dict(zip(flex_prompts, images[len(fid):len(fid) + len(flex_prompts)], strict=True))
        selection = dict(zip(fid, images[len(fid) + len(flex_prompts):], strict=True))
        held_out = fidelity_scores(self.scorer, self.reference_features, generated)
        chosen = fidelity_scores(self.scorer, self.reference_features, selection).scores
        row: dict[str, float] = {"step": step, **held_out.scores, **flexibility_scores(self.scorer, flex),
                                 SELECT: chosen[FIDELITY], se_key(SELECT): chosen[se_key(FIDELITY)]}
        keys = [(prompt, seed) for prompt in generated for seed in e.seeds]  # generate's order
        self.last_per_image = [{"step": step, "prompt": prompt, "seed": seed, FIDELITY: value}
                               for (prompt, seed), value in zip(keys, held_out.per_image, strict=True)]
        pooled = [img for imgs in generated.values() for img in imgs]
        row["eval/fried"] = fried_ratio(pooled, self.reference_stats)
        norms = vector_norms(vectors)
        row["eval/vector_norm"] = sum(norms) / len(norms)
        for extra in self.extra:
            row.update(extra(generated, flex))
        if self.traits is not None:
            row.update(self.traits.score(generated.get("[name]", []), flex))
        self.last_images = list(generated[e.prompts[0]])
        return row


def toyworld_attribute_scorer(spec: str) -> ExtraScore:
    """Attribute accuracy of the toy character's `[name]` images, by the toy world's classifier.

    Ground truth per generated image: `eval/attribute_accuracy` is the mean over the
    character's own traits (hair, eyes, outfit, accessories she wears), with its standard
    error over the images.
    """
    character = parse_spec(spec).name

    def score(generated: dict[str, list[Any]], flex: dict[str, list[Any]]) -> dict[str, float]:
        images = generated.get("[name]") or [img for imgs in generated.values() for img in imgs]
        acc, per_image = attribute_scores(images, character)
        _, se = mean_se(per_image)
        return {ATTRIBUTE_ACCURACY: acc["traits"], se_key(ATTRIBUTE_ACCURACY): se,
                "eval/attribute_accuracy_all": acc["mean"]}

    return score


def make_evaluator(cfg: ExperimentConfig, parts: SDParts, reference: str | None = None,
                   device: str | torch.device = "cpu") -> Evaluator:
    """The run's evaluator, with the toy world's attribute accuracy when the reference art
    (or else the data) is a toy character: a pruned variant of a toy dataset is a plain
    folder, but its `eval.reference: toyworld:<character>:reference` still names her."""
    spec = next((s for s in (reference or cfg.eval.reference, cfg.data.path) if s and is_spec(s)), None)
    extra = [toyworld_attribute_scorer(spec)] if spec else []
    return Evaluator(cfg, parts, reference=reference, extra=extra, device=device)
