"""Trait recall / leak: the pure parts, the config checks, and the toy world's WD1.4-shaped tagger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runs import CAPTION, make_dataset
from tiframework.config import EvalConfig
from tiframework.data.tags import make_variant
from tiframework.data.wd14 import WD14Model, load_tag_csv
from tiframework.errors import UserError
from tiframework.evaluation.traits import (
    TRAIT_LEAK,
    TRAIT_RECALL,
    load_trait_scorer,
    tag_shares,
    variant_traits,
)
from tiframework.toyworld.characters import character_images
from tiframework.toyworld.draw import render
from tiframework.toyworld.tagger import TAGS_FILE, tag_table, toy_tagger_files
from tiny_tagger import build_model, write_csv

WEIGHTS = Path(__file__).resolve().parents[2] / "tiframework" / "toyworld" / "weights" / "classifier"
needs_weights = pytest.mark.skipif(not (WEIGHTS / "model.safetensors").is_file(), reason="toy weights not built")


def test_tag_shares_counts_tags_at_or_above_the_threshold():
    probs = np.array([[0.9, 0.35, 0.1], [0.2, 0.34, 0.5]])
    assert tag_shares(probs, [0, 1], 0.35) == [1.0, 0.0]
    assert tag_shares(probs, [0, 1, 2], 0.35) == pytest.approx([2 / 3, 1 / 3])
    with pytest.raises(ValueError):
        tag_shares(probs, [], 0.35)


def test_traits_are_the_tags_pruning_removed(tmp_path):
    src = make_dataset(tmp_path / "src", n=3)
    variant = make_variant(src, tmp_path / "pruned", remove=["red hair", "smile", "not there"]).out
    assert sorted(variant_traits(variant)) == ["red hair", "smile"]  # removed from captions, not just asked
    with pytest.raises(UserError, match="eval.traits"):
        variant_traits(src)
    none_removed = make_variant(src, tmp_path / "none", remove=["absent"]).out
    with pytest.raises(UserError, match="removed no tags"):
        variant_traits(none_removed)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wd14")
    build_model(folder / "model.onnx")
    write_csv(folder / "selected_tags.csv")
    return folder


def cfg(model: Path | str, **changes) -> EvalConfig:
    base = {"tagger": str(model), "traits": ["long hair", "1girl"],
            "flexibility_prompts": ["[name], from behind"]}
    return EvalConfig(**(base | changes))


def test_scorer_on_the_tiny_tagger_gives_exact_shares(tiny_files):
    # long_hair is always 0.4 (found), 1girl always 0.3 (not found): recall is exactly 1/2.
    leak = [{"prompt": "[name], from behind", "tags": ["long_hair"]}]
    scorer = load_trait_scorer(cfg(tiny_files / "model.onnx", trait_leak=leak), None)
    images = [render(a) for a in character_images("kiri", 3, seed=0)]
    out = scorer.score(images, {"[name], from behind": images[:2]})
    assert out == {TRAIT_RECALL: 0.5, TRAIT_RECALL + "_se": 0.0, TRAIT_LEAK: 1.0, TRAIT_LEAK + "_se": 0.0}
    assert scorer.score([], {}) == {}


def test_traits_default_to_the_data_variant(tiny_files, tmp_path):
    src = make_dataset(tmp_path / "src", n=2, caption=CAPTION.replace("red hair", "long hair"))
    variant = make_variant(src, tmp_path / "pruned", remove=["long hair"]).out
    scorer = load_trait_scorer(cfg(tiny_files / "model.onnx", traits=None), str(variant))
    assert scorer.traits == ["long hair"]
    with pytest.raises(UserError, match="variant"):
        load_trait_scorer(cfg(tiny_files / "model.onnx", traits=None), str(src))


@pytest.mark.parametrize(("changes", "message"), [
    ({"prompts": ["1girl, [name]"]}, r"add '\[name\]' to eval.prompts"),
    ({"trait_leak": [{"prompt": "[name], swimsuit", "tags": ["long hair"]}]}, "not one of eval.flexibility_prompts"),
    ({"trait_leak": [{"prompt": "[name], from behind", "tags": ["lnog hair"]}]}, "lnog hair not among"),
    ({"traits": ["long hair", "pink hiar"]}, "pink hiar not among the tagger's tags"),
    ({"traits": []}, "empty"),
    ({"tagger": "/nowhere/model.onnx"}, "eval.tagger: /nowhere/model.onnx not found"),
])
def test_bad_trait_settings_are_one_clear_error(tiny_files, changes, message):
    with pytest.raises(UserError, match=message):
        load_trait_scorer(cfg(tiny_files / "model.onnx", **changes), None)


def test_tag_files_must_match(tiny_files, tmp_path):
    short = tmp_path / "short.csv"
    write_csv(short, tags=[("long_hair", 0, (0, 0, 0, 0), 0.4), ("1girl", 0, (0, 0, 0, 0), 0.3)])
    with pytest.raises(UserError, match="outputs"):
        load_trait_scorer(cfg(tiny_files / "model.onnx", tagger_tags=str(short)), None)
    lonely = tmp_path / "model.onnx"
    build_model(lonely)
    with pytest.raises(UserError, match="eval.tagger_tags"):
        load_trait_scorer(cfg(lonely), None)


def test_trait_settings_without_a_tagger_are_a_config_error():
    with pytest.raises(ValueError, match="need eval.tagger"):
        EvalConfig(traits=["hat"])
    assert load_trait_scorer(EvalConfig(), None) is None


@needs_weights
def test_toy_tagger_is_wd14_shaped_cached_and_reads_the_toy_world(tmp_path):
    model_path, tags_csv = toy_tagger_files(tmp_path)
    assert (model_path.parent / TAGS_FILE) == tags_csv
    built = model_path.stat().st_mtime_ns
    assert toy_tagger_files(tmp_path)[0].stat().st_mtime_ns == built  # cached, not rebuilt
    rows = load_tag_csv(tags_csv)
    assert [r.name for r in rows] == [t[0] for t in tag_table()]
    assert {"pink_hair", "long_hair", "green_eyes", "green_dress", "hat", "from_behind"} <= {r.name for r in rows}
    model = WD14Model(model_path, "cpu")
    assert (model.size, model.n_outputs) == (64, len(rows))

    kiri = EvalConfig(tagger=str(model_path), traits=["long hair", "pink hair", "green eyes", "green dress", "hat"])
    scorer = load_trait_scorer(kiri, None)
    own = [render(a) for a in character_images("kiri", 16, seed=3)]
    other = [render(a) for a in character_images("sora", 16, seed=3)]
    assert scorer.score(own, {})[TRAIT_RECALL] >= 0.8
    assert scorer.score(other, {})[TRAIT_RECALL] <= 0.2
