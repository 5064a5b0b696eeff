import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance

from tiframework.errors import UserError
from tiframework.evaluation.diagnostics import (
    ExplodingEmbedding,
    NonFiniteLoss,
    check_loss,
    check_vector_norms,
    fried_score,
    is_fried,
    learning_verdict,
    vector_norms,
)


def artwork(seed: int, size=(256, 320)) -> Image.Image:
    """Flat-shaded 'anime' art: a soft gradient background and a few pastel shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = rng.uniform(120, 200, 3)
    arr = np.stack([base[c] + 40 * (xx if c % 2 else yy) for c in range(3)], -1)
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
        colour = tuple(int(c) for c in rng.integers(90, 230, 3))
        draw.ellipse([x0, y0, x0 + rng.integers(30, w // 2), y0 + rng.integers(30, h // 2)], fill=colour)
    return img


def fry(img: Image.Image, seed: int = 0) -> Image.Image:
    """The guide's over-trained look: boosted saturation and contrast, pixel-scale noise."""
    img = ImageEnhance.Contrast(ImageEnhance.Color(img).enhance(2.5)).enhance(1.5)
    noise = np.random.default_rng(seed).normal(0, 35, (img.height, img.width, 3))
    return Image.fromarray((np.asarray(img, dtype=np.float32) + noise).clip(0, 255).astype(np.uint8))


REFERENCE = [artwork(s) for s in range(4)]


def test_normal_images_score_near_one_and_fried_ones_pass_the_threshold():
    normal = [artwork(s) for s in (10, 11)]
    fried = [fry(im, i) for i, im in enumerate(normal)]
    normal_score = fried_score(normal, REFERENCE)
    fried_value = fried_score(fried, REFERENCE)
    assert 0.6 < normal_score < 1.5
    assert fried_value > 3.0
    assert not is_fried(normal_score, threshold=2.0)
    assert is_fried(fried_value, threshold=2.0)


def test_fried_score_of_the_references_against_themselves_is_exactly_one():
    assert fried_score(REFERENCE, REFERENCE) == pytest.approx(1.0)


def test_fried_score_does_not_depend_on_resolution_much():
    big = [im.resize((im.width * 3, im.height * 3), Image.Resampling.BICUBIC) for im in REFERENCE]
    assert fried_score(big, REFERENCE) == pytest.approx(1.0, abs=0.35)


def test_fried_score_handles_grey_and_tiny_images():
    grey = [Image.new("RGB", (64, 64), (128, 128, 128))]
    assert math.isfinite(fried_score(grey, grey))
    assert math.isfinite(fried_score([Image.new("L", (2, 2))], REFERENCE))
    with pytest.raises(ValueError, match="reference"):
        fried_score(REFERENCE, [])
    assert is_fried(math.nan, threshold=2.0)


@pytest.mark.parametrize(
    "bad", [math.nan, math.inf, -math.inf, torch.tensor(math.nan), torch.tensor([1.0, math.inf])]
)
def test_check_loss_rejects_nan_and_inf(bad):
    with pytest.raises(NonFiniteLoss, match="diverged"):
        check_loss(bad, step=120)


def test_check_loss_passes_finite_values_and_is_a_user_error():
    assert check_loss(torch.tensor(0.25)) == 0.25
    assert check_loss(0.5) == 0.5
    assert issubclass(NonFiniteLoss, UserError)
    with pytest.raises(NonFiniteLoss, match="at step 7"):
        check_loss(math.nan, step=7)


def test_vector_norms_and_the_max_norm_check():
    vectors = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    assert vector_norms(vectors) == [5.0, 0.0, 1.0]
    assert vector_norms(torch.tensor([3.0, 4.0])) == [5.0]
    assert check_vector_norms(vectors, max_norm=None) == [5.0, 0.0, 1.0]
    assert check_vector_norms(vectors, max_norm=5.0) == [5.0, 0.0, 1.0]
    with pytest.raises(ExplodingEmbedding, match="vector 0 .* norm 5"):
        check_vector_norms(vectors, max_norm=4.0, step=3)
    with pytest.raises(ExplodingEmbedding, match="vector 1"):
        check_vector_norms(torch.tensor([[1.0], [math.nan]]), max_norm=None)
    with pytest.raises(ValueError, match="shape"):
        vector_norms(torch.zeros(2, 3, 4))


def test_learning_verdict():
    assert learning_verdict(0.50, 0.60, margin=0.01) is None
    assert learning_verdict(0.50, 0.51, margin=0.01) is None
    stuck = learning_verdict(0.50, 0.505, margin=0.01, step=500)
    assert stuck is not None and stuck.startswith("this run is not learning: ")
    assert "step 500" in stuck
    assert learning_verdict(0.50, 0.40, margin=0.01) is not None  # got worse
    assert learning_verdict(0.50, math.nan, margin=0.01).startswith("this run is not learning")
