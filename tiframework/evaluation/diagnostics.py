"""Automatic answers to the guide's "did you mess it up?".

The guide leaves users to eyeball previews for the fried/"watercolour" look and to
notice dead embeddings after a wasted night. These pure checks turn each symptom into
a number and a verdict; training logs them, warns, or stops on them:
  - a NaN/Inf loss (`check_loss` -> `NonFiniteLoss`): the step is skipped and training
    stops, keeping the last good embedding;
  - exploding or non-finite vectors (`check_vector_norms` -> `ExplodingEmbedding`):
    training stops when `eval.max_vector_norm` is passed;
  - fried eval images (`fried_score`, `is_fried`): a warning;
  - no learning (`learning_verdict`): a warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from tiframework.errors import UserError
from tiframework.sd.embeddings import vector_norms

# Images are compared at a common size: high-frequency energy per pixel depends on
# resolution, and generated previews (512 px) rarely match the reference art's size.
_STAT_SIDE = 256
# Floors keep ratios finite for flat grey references (saturation 0, no edges).
_SAT_FLOOR = 0.02
_HF_FLOOR = 0.002


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite: the embedding has diverged."""


class ExplodingEmbedding(UserError):
    """A vector's L2 norm passed `eval.max_vector_norm`."""


def check_loss(loss: float | torch.Tensor, step: int | None = None) -> float:
    """Return the loss as a float; raise `NonFiniteLoss` when it is NaN or +-Inf."""
    value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
    if math.isfinite(value):
        return value
    where = f" at step {step}" if step is not None else ""
    raise NonFiniteLoss(
        f"training loss is {value}{where}: the embedding diverged. Lower training.learning_rate, "
        "or use training.precision=32 or bf16 instead of fp16; then resume from the last good embedding"
    )


def check_vector_norms(vectors: torch.Tensor, max_norm: float | None, step: int | None = None) -> list[float]:
    """Return the norms; raise `ExplodingEmbedding` when one is non-finite or above `max_norm`."""
    norms = vector_norms(vectors)
    bad = [
        (i, n) for i, n in enumerate(norms) if not math.isfinite(n) or (max_norm is not None and n > max_norm)
    ]
    if not bad:
        return norms
    i, n = bad[0]
    where = f" at step {step}" if step is not None else ""
    raise ExplodingEmbedding(
        f"vector {i} of the embedding has L2 norm {n:.3g}{where} (eval.max_vector_norm={max_norm}): "
        "the embedding is overpowering prompts. Lower training.learning_rate or use an earlier checkpoint"
    )


def _image_stats(image: Image.Image) -> tuple[float, float]:
    """(mean HSV saturation, mean |Laplacian| of luminance), both on a 0..1 scale."""
    img = image.convert("RGB")
    img.thumbnail((_STAT_SIDE, _STAT_SIDE), Image.Resampling.BICUBIC)
    sat = np.asarray(img.convert("HSV"), dtype=np.float32)[..., 1].mean() / 255.0
    y = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if min(y.shape) < 3:
        return float(sat), 0.0
    # 4-neighbour Laplacian on the interior: fried images are full of pixel-scale noise
    # and hard edges, which this responds to and smooth shading does not.
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float(sat), float(np.abs(lap).mean())


def _mean_stats(images: Sequence[Image.Image], what: str) -> tuple[float, float]:
    if not images:
        raise ValueError(f"fried_score needs at least one {what} image")
    stats = np.array([_image_stats(im) for im in images])
    return float(stats[:, 0].mean()), float(stats[:, 1].mean())


def fried_score(images: Sequence[Image.Image], reference_images: Sequence[Image.Image]) -> float:
    """How "deep-fried" generated images look relative to the reference art.

    The geometric mean of two ratios, generated / reference: mean saturation and mean
    high-frequency (Laplacian) energy. About 1 for images like the references; well above
    1 for the guide's over-saturated, noisy "fried"/"watercolour" previews. Relative to the
    references because flat-coloured anime art and painterly art differ a lot in both.
    """
    return fried_ratio(images, reference_stats(reference_images))


def reference_stats(reference_images: Sequence[Image.Image]) -> tuple[float, float]:
    """The reference art's (saturation, high-frequency energy): compute once per run."""
    return _mean_stats(reference_images, "reference")


def fried_ratio(images: Sequence[Image.Image], reference: tuple[float, float]) -> float:
    """`fried_score` against precomputed `reference_stats`."""
    gen_sat, gen_hf = _mean_stats(images, "generated")
    ref_sat, ref_hf = reference
    sat_ratio = max(gen_sat, _SAT_FLOOR) / max(ref_sat, _SAT_FLOOR)
    hf_ratio = max(gen_hf, _HF_FLOOR) / max(ref_hf, _HF_FLOOR)
    return math.sqrt(sat_ratio * hf_ratio)


def is_fried(score: float, threshold: float) -> bool:
    """True when a `fried_score` passes `eval.fried_threshold` (NaN counts as fried)."""
    return not score <= threshold


def learning_verdict(
    baseline_fidelity: float, fidelity: float, margin: float, step: int | None = None
) -> str | None:
    """The "not learning" warning, or None when fidelity rose at least `margin` over step 0.

    `baseline_fidelity` is the CLIP fidelity before training (the init text alone); if it
    has not moved by `eval.verdict_after` steps, the embedding is dead or the prompts do not
    reach it, and the rest of the night would be wasted.
    """
    at = f" at step {step}" if step is not None else ""
    if not (math.isfinite(baseline_fidelity) and math.isfinite(fidelity)):
        return f"this run is not learning: CLIP fidelity{at} is {fidelity} (baseline {baseline_fidelity})"
    gain = fidelity - baseline_fidelity
    if gain >= margin:
        return None
    return (
        f"this run is not learning: CLIP fidelity{at} is {fidelity:.4f}, {gain:+.4f} from the step-0 "
        f"baseline {baseline_fidelity:.4f} (needs +{margin}). Check that the templates contain [name], "
        "that the learning rate is not tiny, and that the reference art shows the character"
    )
