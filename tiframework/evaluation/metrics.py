"""Objective scores per checkpoint: the guide's "we don't have any objective metrics", answered.

- fidelity: does the character look like the reference art? Mean CLIP image-image cosine
  similarity between generated images and every reference image (and, per generated
  image, its best-matching reference: forgiving when the references vary in pose/outfit).
- flexibility: does the embedding still follow the rest of the prompt? CLIP text-image
  similarity of images from "[name], wearing a swimsuit" with the text "wearing a swimsuit".
  An over-trained embedding draws the character in its usual outfit whatever the prompt.

A training callback generates images per prompt, then calls `score_checkpoint`;
`validate_eval_config` runs before training so a typo costs seconds, not a night.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics import Metric

from tiframework.config import EvalConfig
from tiframework.data.images import UnreadableImage, list_images, read_image
from tiframework.errors import UserError
from tiframework.evaluation.clipscore import ClipScorer, check_clip_model_name, load_clip_scorer
from tiframework.evaluation.columns import FIDELITY, FIDELITY_BEST_MATCH, FLEXIBILITY
from tiframework.evaluation.noise import se_from_sums, se_key

log = logging.getLogger(__name__)

PLACEHOLDER = "[name]"
# Reference art can be huge; CLIP sees 224 px and fried_score 256 px, so keep no more.
_REFERENCE_MAX_SIDE = 512


def prompt_without_name(prompt: str, placeholder: str = PLACEHOLDER) -> str:
    """The prompt with `[name]` and the comma that went with it removed.

    "[name], wearing a swimsuit" -> "wearing a swimsuit";
    "1girl, [name], standing" -> "1girl, standing"; "a photo of [name] outdoors" ->
    "a photo of outdoors". Works tag by tag (split on ","), so no stray comma is left.
    """
    tags = (" ".join(tag.replace(placeholder, " ").split()) for tag in prompt.split(","))
    return ", ".join(t for t in tags if t)


class FidelityScore(Metric):
    """Mean CLIP cosine similarity of generated images to the reference images.

    `update(features)` takes image features (N, D) of generated images; `compute()`
    returns {"mean": mean over all (generated, reference) pairs, "best_match": mean over
    generated images of their highest similarity to any reference}, and each one's
    standard error over the generated images ("mean_se", "best_match_se"; NaN for a
    single image). Features are L2-normalized here, so raw embeddings work too.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, reference_features: torch.Tensor, **kwargs) -> None:
        super().__init__(**kwargs)
        if reference_features.ndim != 2 or reference_features.shape[0] == 0:
            raise ValueError(f"reference_features must be (R>0, D), got {tuple(reference_features.shape)}")
        # A buffer, not a metric state: it is fixed, never reset and never summed across ranks.
        self.register_buffer("reference", F.normalize(reference_features.float(), dim=-1), persistent=False)
        self.add_state("pair_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("best_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        # Sums of squares of the per-image values: their spread gives the standard errors.
        self.add_state("pair_sq", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("best_sq", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, features: torch.Tensor) -> None:
        features = _check_features(features, self.reference.shape[1], "generated image features")
        sims = F.normalize(features.to(self.reference), dim=-1) @ self.reference.T  # (N, R)
        # Sums of per-image values, in float64, so several updates equal one big update.
        per_image, best = sims.mean(dim=1).double(), sims.max(dim=1).values.double()  # (N,)
        self.pair_sum += per_image.sum()
        self.best_sum += best.sum()
        self.pair_sq += (per_image * per_image).sum()
        self.best_sq += (best * best).sum()
        self.count += sims.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        n = int(self.count)
        return {
            "mean": (self.pair_sum / self.count).float(),
            "best_match": (self.best_sum / self.count).float(),
            "mean_se": torch.tensor(se_from_sums(float(self.pair_sum), float(self.pair_sq), n)),
            "best_match_se": torch.tensor(se_from_sums(float(self.best_sum), float(self.best_sq), n)),
        }


class FlexibilityScore(Metric):
    """Mean CLIP text-image cosine similarity of generated images with their prompt text.

    `update(image_features (N, D), text_features (N, D) or (1, D))`: a single text row is
    compared with every image (the usual case: N seeds of one prompt). `se()` is the
    standard error of the mean over the images (NaN for a single image).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("sim_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sim_sq", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, image_features: torch.Tensor, text_features: torch.Tensor) -> None:
        if text_features.ndim == 1:
            text_features = text_features[None]
        dim = text_features.shape[-1]
        image_features = _check_features(image_features, dim, "image features")
        if text_features.shape[0] not in (1, image_features.shape[0]):
            raise ValueError(
                f"text_features has {text_features.shape[0]} rows for {image_features.shape[0]} images "
                "(give one row per image, or one row for all)"
            )
        img = F.normalize(image_features.float(), dim=-1)
        txt = F.normalize(text_features.float(), dim=-1).to(img.device)
        sims = (img * txt).sum(dim=-1).double()  # (N,); broadcasts a single text row
        self.sim_sum += sims.sum()
        self.sim_sq += (sims * sims).sum()
        self.count += img.shape[0]

    def compute(self) -> torch.Tensor:
        return (self.sim_sum / self.count).float()

    def se(self) -> float:
        return se_from_sums(float(self.sim_sum), float(self.sim_sq), int(self.count))


def _check_features(features: torch.Tensor, dim: int, what: str) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[1] != dim:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{what} must be (N, {dim}), got {shape}")
    return features


def read_reference_images(folder: str | Path) -> list[Image.Image]:
    """The readable images of a reference folder (RGB, at most 512 px a side).

    Unreadable files are skipped with a warning: one corrupt download should not stop
    the evaluation. A missing folder, or one with no readable image, is a UserError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"eval.reference: {folder} is not a folder (give a folder of reference art)")
    images = []
    for path in list_images(folder):
        try:
            image = read_image(path)
        except UnreadableImage as exc:
            log.warning("skipping reference image %s", exc)
            continue
        image.thumbnail((_REFERENCE_MAX_SIDE, _REFERENCE_MAX_SIDE), Image.Resampling.LANCZOS)
        images.append(image)
    if not images:
        raise UserError(f"eval.reference: {folder} has no readable images (.png, .jpg, .webp, ...)")
    return images


def score_checkpoint(
    scorer: ClipScorer,
    reference_features: torch.Tensor,
    generated: Mapping[str, Sequence[Image.Image]],
    flex_generated: Mapping[str, Sequence[Image.Image]],
) -> dict[str, float]:
    """Scores of one checkpoint's images, keyed by namespaced metric name.

    `generated`: fidelity prompt -> images (all pooled into one fidelity score);
    `flex_generated`: flexibility prompt (with [name]) -> images, each scored against its
    prompt without [name]. Each score comes with its standard error over the images
    (`<metric>_se`). A group with no images at all leaves its keys out, so the caller
    never logs a NaN for a prompt list the config left empty.
    """
    return fidelity_scores(scorer, reference_features, generated).scores | flexibility_scores(scorer, flex_generated)


def flexibility_scores(scorer: ClipScorer, flex_generated: Mapping[str, Sequence[Image.Image]]) -> dict[str, float]:
    """Flexibility (+ `_se`) of the images of each flexibility prompt against its text
    without [name], pooled; empty when there are no images."""
    flexibility = FlexibilityScore()
    for prompt, images in flex_generated.items():
        if images:
            text = scorer.text_features([prompt_without_name(prompt)])  # (1, D)
            flexibility.update(scorer.image_features(images), text)
    if flexibility.count == 0:
        return {}
    return {FLEXIBILITY: float(flexibility.compute()), se_key(FLEXIBILITY): flexibility.se()}


class Fidelity(NamedTuple):
    """`scores`: fidelity and best-match fidelity (+ `_se`); `per_image`: each image's
    fidelity (mean similarity to the references), prompts in order, images in order."""

    scores: dict[str, float]
    per_image: list[float]


def fidelity_scores(scorer: ClipScorer, reference_features: torch.Tensor,
                    generated: Mapping[str, Sequence[Image.Image]]) -> Fidelity:
    """Fidelity of all images of `generated`, pooled; empty when there are no images."""
    fidelity = FidelityScore(reference_features)
    per_image: list[float] = []
    for images in generated.values():
        if images:
            features = scorer.image_features(images)
            fidelity.update(features)
            sims = F.normalize(features, dim=-1) @ fidelity.reference.T  # (N, R)
            per_image += sims.mean(dim=1).tolist()
    if fidelity.count == 0:
        return Fidelity({}, [])
    result = fidelity.compute()
    return Fidelity({FIDELITY: float(result["mean"]), se_key(FIDELITY): float(result["mean_se"]),
                     FIDELITY_BEST_MATCH: float(result["best_match"]),
                     se_key(FIDELITY_BEST_MATCH): float(result["best_match_se"])}, per_image)


def check_eval_prompts(cfg: EvalConfig) -> None:
    """Every prompt must contain [name]; a flexibility prompt also needs other text."""
    if not cfg.prompts:
        raise UserError("eval.prompts is empty: fidelity needs at least one prompt with [name]")
    for key, prompts in (
        ("eval.prompts", cfg.prompts),
        ("eval.flexibility_prompts", cfg.flexibility_prompts),
    ):
        for prompt in prompts:
            if PLACEHOLDER not in prompt:
                raise UserError(f"{key}: {prompt!r} has no {PLACEHOLDER}, so it would not test the embedding")
    for prompt in cfg.flexibility_prompts:
        if not prompt_without_name(prompt):
            raise UserError(
                f"eval.flexibility_prompts: {prompt!r} has nothing besides {PLACEHOLDER} to score "
                "(use e.g. '[name], wearing a swimsuit')"
            )


class ValidatedEval(NamedTuple):
    scorer: ClipScorer
    reference_images: list[Image.Image]


def validate_eval_config(cfg: EvalConfig, device: str | torch.device = "cpu") -> ValidatedEval:
    """Check the eval section before any training time is spent; return the loaded scorer
    and the reference images, so neither is loaded twice.

    Cheapest checks first: prompts, model name, weights file present, reference images
    readable, then the weights actually loading into the model. Each failure is one
    UserError naming the key. Call it when evaluation is on (`eval.every > 0`, or the
    eval command).
    """
    check_eval_prompts(cfg)
    check_clip_model_name(cfg.clip_model)
    if cfg.clip_pretrained is not None and not Path(cfg.clip_pretrained).expanduser().is_file():
        raise UserError(f"eval.clip_pretrained: {cfg.clip_pretrained} not found (give a local weights file)")
    if cfg.reference is None:
        raise UserError("eval.reference is not set: fidelity needs a folder of reference art")
    reference_images = read_reference_images(cfg.reference)
    if cfg.clip_pretrained is None:
        log.warning(
            "eval.clip_pretrained is not set: %s has random weights, scores are meaningless", cfg.clip_model
        )
    return ValidatedEval(load_clip_scorer(cfg.clip_model, cfg.clip_pretrained, device), reference_images)
