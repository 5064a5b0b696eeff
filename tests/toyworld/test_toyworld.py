"""The toy world: exact captions, determinism, held-out characters, shipped weights."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from runs import TOY_WEIGHTS, needs_toy_weights
from tiframework.data.sources import toyworld_dataset
from tiframework.errors import UserError
from tiframework.sd.models import TOYWORLD_DIR
from tiframework.toyworld.build import WEIGHTS_DIR
from tiframework.toyworld.characters import (
    CHARACTERS,
    HELD_OUT,
    character_images,
    get_character,
    materialize,
    parse_spec,
)
from tiframework.toyworld.draw import render
from tiframework.toyworld.world import (
    EYE_COLORS,
    HAIR_COLORS,
    OUTFIT_COLORS,
    STAR,
    Attributes,
    sample_attributes,
)


def _has_colour(attrs: Attributes, rgb: tuple[int, int, int]) -> bool:
    return bool((np.asarray(render(attrs)) == np.array(rgb, dtype=np.uint8)).all(-1).any())


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = materialize("mika", 4, seed=3, root=tmp_path / "a")
    b = materialize("mika", 4, seed=3, root=tmp_path / "b")
    for f in sorted(a.iterdir()):
        assert f.read_bytes() == (b / f.name).read_bytes()
    other = materialize("mika", 4, seed=4, root=tmp_path / "a")
    assert (other / "0000.png").read_bytes() != (a / "0000.png").read_bytes()


def test_materialize_layout_and_reuse(tmp_path: Path) -> None:
    folder = toyworld_dataset("toyworld:sora:reference?n=3&seed=1", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [".toyworld"] + [f"000{i}.{e}" for i in range(3) for e in ("png", "txt")]
    stamp = (folder / "0000.png").stat().st_mtime_ns
    assert toyworld_dataset("toyworld:sora:reference?n=3&seed=1", tmp_path) == folder
    assert (folder / "0000.png").stat().st_mtime_ns == stamp  # a complete folder is reused, not rewritten
    (folder / ".toyworld").write_text("made-by-older-code")
    assert toyworld_dataset("toyworld:sora:reference?n=3&seed=1", tmp_path) == folder
    assert (folder / "0000.png").stat().st_mtime_ns != stamp  # ... unless other drawing code made it


def test_spec_syntax() -> None:
    assert parse_spec("toyworld:kiri") == ("kiri", "train", 24, 0, False)
    assert parse_spec("toyworld:kiri:reference?n=5&seed=2") == ("kiri", "reference", 5, 2, False)
    assert parse_spec("toyworld:kiri?pruned=1").pruned
    for bad in ("toyworld:kiri:test", "toyworld:kiri?size=3", "kiri", "toyworld:kiri?pruned=2"):
        with pytest.raises(UserError):
            parse_spec(bad)


def test_pruned_spec_is_a_variant_without_her_traits(tmp_path: Path) -> None:
    import yaml

    folder = toyworld_dataset("toyworld:kiri?n=4&pruned=1", tmp_path)
    source = toyworld_dataset("toyworld:kiri?n=4", tmp_path)
    assert folder != source and sorted(p.name for p in folder.glob("*.png")) == sorted(p.name for p in source.glob("*.png"))
    traits = set(get_character("kiri").trait_tags())
    for caption in folder.glob("*.txt"):
        tags = [t.strip() for t in caption.read_text().split(",")]
        original = [t.strip() for t in (source / caption.name).read_text().split(",")]
        assert tags == [t for t in original if t not in traits] and "1girl" in tags
    record = yaml.safe_load((folder / "variant.yaml").read_text())
    assert set(record["rules"]["remove"]) == traits
    assert toyworld_dataset("toyworld:kiri?n=4&pruned=1", tmp_path) == folder  # reused


def test_unknown_character_lists_known() -> None:
    with pytest.raises(UserError, match="mika.*rin.*kiri.*sora"):
        get_character("nobody")
    with pytest.raises(UserError, match="known characters"):
        toyworld_dataset("toyworld:nobody")


def test_caption_matches_drawing() -> None:
    rng = random.Random(0)
    for _ in range(300):
        a = sample_attributes(rng)
        tags = a.tags()
        assert tags[:2] == ["1girl", "solo"] and len(set(tags)) == len(tags)
        assert f"{a.hair_color} hair" in tags and _has_colour(a, HAIR_COLORS[a.hair_color])
        assert f"{a.outfit_color} {a.outfit_type}" in tags and _has_colour(a, OUTFIT_COLORS[a.outfit_color])
        assert f"{a.hair_length} hair" in tags and a.background in tags
        behind = a.view == "from behind"
        # Eye colour is tagged exactly when the eyes are drawn (not from behind).
        assert (f"{a.eye_color} eyes" in tags) == (not behind)
        assert _has_colour(a, EYE_COLORS[a.eye_color]) == (not behind) or a.eye_color == "brown"
        assert ("glasses" in tags) == ("glasses" in a.accessories and not behind)
        for acc in ("hat", "hair bow", "gloves"):
            assert (acc in tags) == (acc in a.accessories)
        assert (a.view in tags) == (a.view != "front")


def test_emblem_drawn_but_never_tagged() -> None:
    records = character_images("kiri", 24, seed=0)
    front = [a for a in records if a.view != "from behind"]
    assert front and all(_has_colour(a, STAR) for a in front)
    for a in records:
        assert not any("star" in t or "emblem" in t for t in a.tags())
    assert not any(_has_colour(a, STAR) for a in character_images("sora", 8, seed=0))


def test_held_out_combinations_never_sampled() -> None:
    rng = random.Random(1)
    assert not any(c.matches(sample_attributes(rng, HELD_OUT)) for _ in range(5000) for c in HELD_OUT)
    # ... while the unrestricted world does produce them, so the exclusion is doing work.
    rng = random.Random(1)
    assert any(c.matches(sample_attributes(rng)) for _ in range(5000) for c in HELD_OUT)
    held = [c for c in CHARACTERS.values() if c.held_out]
    assert {c.name for c in held} == {"kiri", "sora"}
    assert all(any(h.matches(c.base) for h in HELD_OUT) for c in held)


@needs_toy_weights
def test_shape_mismatch_is_a_user_error(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from tiframework.toyworld.nets import verify_weights

    folder = tmp_path / "weights"
    shutil.copytree(TOY_WEIGHTS, folder, ignore=shutil.ignore_patterns("clip", "classifier"))
    verify_weights(folder)
    path = next((folder / "unet").glob("*.safetensors"))
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("conv_in.weight"))
    tensors[key] = tensors[key][:16].clone()
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(UserError, match="conv_in.weight.*toyworld preset expects"):
        verify_weights(folder)


@needs_toy_weights
def test_shipped_weights_load_and_draw() -> None:
    import torch

    from tiframework.config import ModelConfig
    from tiframework.sd.generate import generate
    from tiframework.sd.models import load_model

    parts = load_model(ModelConfig(preset="toyworld"))
    assert parts.native_size == 64 and parts.bucket_step == 16 and parts.width == 64
    assert all(p.dtype == torch.float32 for m in parts.frozen_modules() for p in m.parameters())
    images = generate(parts, ["1girl, solo, red hair, blue dress"], [0, 1], name=None, vectors=None, steps=4)[0]
    assert images[0].size == (64, 64) and np.asarray(images[0]).std() > 5


# Measured on the committed classifier (50-min build, seed 0; CARD.md): every group >= 0.84
# on the held-out characters' fresh images (kiri's hair length is the lowest, 0.84; most are
# 1.00); 0.8 leaves room for float noise without hiding a broken model.
CLASSIFIER_THRESHOLD = 0.8


@needs_toy_weights
def test_classifier_accurate_on_held_out_characters() -> None:
    from tiframework.toyworld.classifier import AttributeClassifier, attribute_accuracy

    clf = AttributeClassifier()
    for name in ("kiri", "sora"):
        images = [render(a) for a in character_images(name, 32, seed=123)]
        scores = attribute_accuracy(images, name, clf)
        assert min(scores.values()) >= CLASSIFIER_THRESHOLD, (name, scores)


@pytest.mark.slow
def test_build_command_writes_a_loadable_world(tmp_path: Path, monkeypatch) -> None:
    """`tiframework toyworld build` end to end on a 6-second budget: every model, the card."""
    import functools

    from tiframework.cli import main
    from tiframework.config import ModelConfig
    from tiframework.sd.models import load_model
    from tiframework.toyworld import build
    from tiframework.toyworld.classifier import AttributeClassifier
    from tiframework.toyworld.nets import verify_weights

    # The card's held-out classifier accuracy on 128 fresh images, not 1024: rendering those took
    # 20 of this test's 30 s, and the number is not what it checks (every model written, loadable,
    # and a card that says how it was made).
    monkeypatch.setattr(build, "heldout_accuracy", functools.partial(build.heldout_accuracy, n=128))
    out = tmp_path / "weights"
    assert main(["toyworld", "build", "--out", str(out), "--budget-minutes", "0.1", "--threads", "1"]) == 0
    verify_weights(out)
    parts = load_model(ModelConfig(path=str(out)))
    assert parts.native_size == 64 and parts.width == 64
    AttributeClassifier(out / "classifier").predict([render(sample_attributes(random.Random(0)))])
    assert (out / "clip" / "open_clip_model.safetensors").is_file()
    card = (out / "CARD.md").read_text()
    assert "| diffusion |" in card and "kiri:" in card and "--budget-minutes 0.1" in card
    assert not list(tmp_path.glob(".weights.*"))  # no temporary folder left behind


def test_the_model_loader_finds_the_weights_the_build_writes():
    # sd.models reaches the toy world's weights through the toyworld package's resources.
    assert TOYWORLD_DIR.resolve() == WEIGHTS_DIR.resolve()
