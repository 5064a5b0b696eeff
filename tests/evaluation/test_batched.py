"""Evaluations scored together (shared sampler calls) equal each evaluation alone.

Tolerance: rows of one sampler call go through batched UNet and VAE kernels, which round
differently from a call with fewer rows; the images then pass through uint8 PNG values
and CLIP. Measured on the tiny preset: images differ by at most 1 (of 255) in a few
pixels, scores by at most 4.2e-6 (0 with one image per call); TOL = 1e-4. The tiny
preset's random CLIP barely tells embeddings apart, so the check that the comparison
has teeth is on pixels: another member's vectors change them by more than 10.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runs import make_dataset
from runs import shrunk_quickstart as config
from tiframework.evaluation.batched import score_together
from tiframework.evaluation.evaluator import make_evaluator
from tiframework.sd.embeddings import create

TOL = 1e-4
LONG = "[name], " + ", ".join(f"{c} {t}" for c in ("red", "blue", "green", "pink", "black", "white")
                              for t in ("ribbon", "bow", "flower", "star", "shoes", "hat"))  # two chunks


def members(tmp_path, parts):
    ref = make_dataset(tmp_path / "ref", n=2, caption=None)
    common = [f"eval.reference={ref}", "eval.every=1", "eval.seeds=[0, 1]", "eval.selection_seeds=[5]"]
    variants = [
        ["embedding.vectors_per_token=2"],
        ["embedding.name=bee_ti", "embedding.vectors_per_token=3", "model.clip_skip=2",
         f"eval.flexibility_prompts=[\"{LONG}\"]"],  # a prompt needing two 77-token chunks: its own call
        ["embedding.vectors_per_token=4", "embedding.init_text=red hair", "eval.steps=3"],  # other settings
    ]
    out = []
    for i, v in enumerate(variants):
        cfg = config(tmp_path, *common, *v)
        vectors = create(cfg.embedding, parts, {}).vectors + 0.05 * torch.randn(
            cfg.embedding.vectors_per_token, parts.width, generator=torch.Generator().manual_seed(i))
        out.append((make_evaluator(cfg, parts), vectors))
    return out


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(img, dtype=np.int16) for img in images])


@pytest.mark.parametrize("max_images", [None, 1, 3])
def test_scoring_together_equals_scoring_alone(tmp_path, tiny_parts, max_images):
    jobs = members(tmp_path, tiny_parts)
    alone = []
    for evaluator, vectors in jobs:
        row = evaluator.score(vectors, 4)
        alone.append((row, list(evaluator.last_images), list(evaluator.last_per_image)))
    together = score_together([(e, v, 4) for e, v in jobs], max_images=max_images)
    for (evaluator, _), row, (solo_row, solo_images, solo_per_image) in zip(jobs, together, alone, strict=True):
        assert set(row) == set(solo_row)
        for key, value in solo_row.items():
            assert row[key] == pytest.approx(value, abs=TOL, nan_ok=True), key
        assert np.abs(pixels(evaluator.last_images) - pixels(solo_images)).max() <= 1
        assert [{**r, "eval/clip_fidelity": 0} for r in evaluator.last_per_image] == \
            [{**r, "eval/clip_fidelity": 0} for r in solo_per_image]
    # What the tolerance guards against: a member's images drawn with another member's vectors.
    (first, _), (_, other) = jobs[0], jobs[2]
    first.score(other[:2], 4)
    assert np.abs(pixels(first.last_images) - pixels(alone[0][1])).max() > 10


def test_a_run_is_scored_on_the_seeds_its_training_seed_picks(tmp_path, tiny_parts):
    """With eval.seeds_follow_training_seed every image request, per-image row and selection
    image uses the run's shifted seeds; without it, the listed ones."""
    ref = make_dataset(tmp_path / "ref", n=2, caption=None)
    common = [f"eval.reference={ref}", "eval.every=1", "eval.seeds=[0, 1]", "eval.flexibility_prompts=[]",
              "training.seed=3"]
    vectors = torch.zeros(2, tiny_parts.width)
    follow = make_evaluator(config(tmp_path, *common, "eval.seeds_follow_training_seed=true"), tiny_parts)
    assert [r.seeds for r in follow.requests(vectors)] == [[3000, 3001], [3002, 3003]]
    follow.score(vectors, 0)
    assert [r["seed"] for r in follow.last_per_image] == [3000, 3001]
    fixed = make_evaluator(config(tmp_path, *common), tiny_parts)
    assert [r.seeds for r in fixed.requests(vectors)] == [[0, 1], [2, 3]]


def test_an_image_asked_for_twice_is_drawn_once(tmp_path, tiny_parts, monkeypatch):
    """Two arms of one training seed at step 0 (both still at the init text, the same eval
    seeds) ask for the same images: each (prompt embeddings, seed) is sampled once, and both
    jobs get the images and the row they would get alone. Vectors that differ are drawn apart."""
    import tiframework.sd.generate as generate

    sampled: list[int] = []
    real = generate._sample

    def counting(pipe, prompt_embeds, *args):
        sampled.append(prompt_embeds.shape[0])
        return real(pipe, prompt_embeds, *args)

    monkeypatch.setattr(generate, "_sample", counting)
    ref = make_dataset(tmp_path / "ref", n=2, caption=None)
    cfg = config(tmp_path, f"eval.reference={ref}", "eval.every=1", "eval.seeds=[0, 1]", "eval.selection_seeds=[5]")
    vectors = create(cfg.embedding, tiny_parts, {}).vectors
    a, b = make_evaluator(cfg, tiny_parts), make_evaluator(cfg, tiny_parts)
    per_job = sum(len(r.seeds) for r in a.requests(vectors))  # [name] x 2 seeds, 1 flexibility x 2, selection x 1
    alone = a.score(vectors, 0)
    alone_images = pixels([img for img in a.last_images])
    sampled.clear()
    rows = score_together([(a, vectors, 0), (b, vectors.clone(), 0)])
    assert sum(sampled) == per_job  # not twice
    assert rows[0] == pytest.approx(rows[1], nan_ok=True)
    assert rows[0] == pytest.approx(alone, abs=TOL, nan_ok=True)
    assert np.abs(pixels(b.last_images) - alone_images).max() <= 1
    sampled.clear()
    score_together([(a, vectors, 0), (b, vectors + 0.05, 0)])
    assert sum(sampled) == 2 * per_job


def test_images_asked_for_twice_in_bfloat16_are_drawn_once(make_tiny_parts):
    """Half-precision weights (a GPU run's bf16) give bf16 prompt embeddings, which numpy
    cannot hold: the drawn-once key must still be taken from them."""
    from tiframework.sd.generate import ImageRequest, generate_requests
    from tiframework.sd.models import move

    parts = make_tiny_parts()
    for module in (parts.unet, parts.text_encoder, parts.vae):
        move(module, torch.device("cpu"), torch.bfloat16)
    request = ImageRequest("[name]", [0], "x_ti", torch.zeros(2, parts.width))
    first, second = generate_requests(parts, [request, request], steps=2)
    assert first[0] is second[0]
