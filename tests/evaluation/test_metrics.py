import math
import socket

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from tiframework.config import EvalConfig
from tiframework.errors import UserError
from tiframework.evaluation import clipscore
from tiframework.evaluation.clipscore import CLIP_CONFIG_DIR, clip_model_names, load_clip_scorer
from tiframework.evaluation.metrics import (
    FIDELITY,
    FIDELITY_BEST_MATCH,
    FLEXIBILITY,
    FidelityScore,
    FlexibilityScore,
    fidelity_scores,
    prompt_without_name,
    read_reference_images,
    score_checkpoint,
    validate_eval_config,
)

TINY = "tif-tiny-clip"


def character(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (48, 64), tuple(int(c) for c in rng.integers(150, 255, 3)))
    draw = ImageDraw.Draw(img)
    draw.ellipse([10, 5, 38, 33], fill=(240, 200, 180))  # the same face in every reference
    draw.rectangle([12, 34, 36, 62], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return img


def noise(seed: int) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    return Image.fromarray(arr)


REFERENCE = [character(s) for s in range(4)]


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    return load_clip_scorer(TINY, None)


@pytest.fixture(scope="module")
def ref_features(scorer):
    return scorer.image_features(REFERENCE)


@pytest.fixture(scope="module")
def weights_file(scorer, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "tiny.pt"
    torch.save(scorer.model.state_dict(), path)
    return path


@pytest.fixture
def reference_dir(tmp_path):
    folder = tmp_path / "ref"
    folder.mkdir()
    for i, im in enumerate(REFERENCE):
        im.save(folder / f"{i}.png")
    return folder


# --- prompts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "text"),
    [
        ("[name], wearing a swimsuit", "wearing a swimsuit"),
        ("1girl, [name], standing", "1girl, standing"),
        ("from behind, [name]", "from behind"),
        ("a photo of [name] outdoors", "a photo of outdoors"),
        ("[name],  outdoors ,night", "outdoors, night"),
        ("[name]", ""),
        ("no placeholder", "no placeholder"),
    ],
)
def test_prompt_without_name(prompt, text):
    assert prompt_without_name(prompt) == text


# --- loading ---------------------------------------------------------------------------


def test_every_project_config_is_registered():
    names = clip_model_names()
    stems = [p.stem for p in CLIP_CONFIG_DIR.glob("*.json")]
    assert TINY in stems
    assert set(stems) <= set(names)
    assert "ViT-L-14" in names


def test_features_are_normalized_and_shaped(scorer):
    feats = scorer.image_features([REFERENCE[0], Image.new("L", (10, 30)), Image.new("RGBA", (30, 10))])
    assert feats.shape == (3, 32) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3))
    text = scorer.text_features(["wearing a swimsuit", ""])
    assert text.shape == (2, 32)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    assert scorer.image_features([]).shape == (0, 32)
    assert scorer.text_features([]).shape == (0, 32)


def test_batching_does_not_change_features(scorer):
    images = REFERENCE + [noise(1)]
    full = scorer.image_features(images)
    scorer.batch_size = 2
    try:
        torch.testing.assert_close(scorer.image_features(images), full)
    finally:
        scorer.batch_size = 32


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_round_trip(scorer, tmp_path, suffix):
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in scorer.model.state_dict().items()}
    torch.save(state, path) if suffix == ".pt" else save_file(state, str(path))
    loaded = load_clip_scorer(TINY, path)
    torch.testing.assert_close(loaded.image_features(REFERENCE), scorer.image_features(REFERENCE))
    torch.testing.assert_close(loaded.text_features(["a b"]), scorer.text_features(["a b"]))


def test_mismatched_weights_name_the_file(scorer, tmp_path):
    state = scorer.model.state_dict()
    state["visual.proj"] = torch.zeros(7, 7)  # another architecture's projection
    wrong = tmp_path / "other.pt"
    torch.save(state, wrong)
    with pytest.raises(UserError, match=r"other\.pt is not a weights file for tif-tiny-clip"):
        load_clip_scorer(TINY, wrong)
    del state["visual.proj"]
    torch.save(state, wrong)
    with pytest.raises(UserError, match=r"other\.pt"):
        load_clip_scorer(TINY, wrong)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"garbage\.bin cannot be read as a state_dict"):
        load_clip_scorer(TINY, garbage)
    with pytest.raises(UserError, match=r"missing\.pt not found"):
        load_clip_scorer(TINY, tmp_path / "missing.pt")


def test_unknown_and_hub_only_model_names():
    with pytest.raises(UserError, match=r"'ViT-L-15' is not an open_clip model.*ViT-L-14.*clip_model_names"):
        load_clip_scorer("ViT-L-15", None)
    for name in ("hf-hub:laion/CLIP-ViT-L-14", "ViT-B-16-SigLIP"):
        with pytest.raises(UserError, match="eval.clip_model"):
            load_clip_scorer(name, None)


def test_loading_never_touches_the_network(weights_file, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in ("download_pretrained", "download_pretrained_from_hf"):
        monkeypatch.setattr(open_clip.factory, name, refuse)
    scorer = load_clip_scorer(TINY, weights_file)
    assert scorer.image_features([REFERENCE[0]]).shape == (1, 32)


def test_registration_is_idempotent(monkeypatch):
    clipscore.register_clip_configs()
    calls = []
    monkeypatch.setattr(clipscore.open_clip, "add_model_config", lambda p: calls.append(p))
    clipscore.register_clip_configs()
    clipscore.register_clip_configs()
    assert calls == []


# --- metrics ---------------------------------------------------------------------------


def test_reference_against_itself_beats_noise(scorer, ref_features):
    own = FidelityScore(ref_features)
    own.update(ref_features)
    own_scores = own.compute()
    other = FidelityScore(ref_features)
    other.update(scorer.image_features([noise(s) for s in range(4)]))
    other_scores = other.compute()
    # Even with random CLIP weights an image matches itself exactly.
    assert own_scores["best_match"].item() == pytest.approx(1.0, abs=1e-6)
    assert other_scores["best_match"] < own_scores["best_match"]
    assert other_scores["mean"] < own_scores["mean"]
    sims = ref_features @ ref_features.T
    assert own_scores["mean"].item() == pytest.approx(sims.mean().item(), abs=1e-6)


def test_identical_images_have_similarity_one(scorer):
    feats = scorer.image_features([REFERENCE[1], REFERENCE[1].copy()])
    assert torch.dot(feats[0], feats[1]).item() == pytest.approx(1.0, abs=1e-6)


def test_metric_updates_aggregate_like_one_big_update(ref_features):
    gen = torch.randn(10, 32, generator=torch.Generator().manual_seed(0))
    split = FidelityScore(ref_features)
    for chunk in (gen[:3], gen[3:4], gen[4:]):
        split.update(chunk)
    whole = FidelityScore(ref_features)
    whole.update(gen)
    for key in ("mean", "best_match", "mean_se", "best_match_se"):
        torch.testing.assert_close(split.compute()[key], whole.compute()[key])

    text = torch.randn(10, 32, generator=torch.Generator().manual_seed(1))
    flex_split, flex_whole = FlexibilityScore(), FlexibilityScore()
    flex_split.update(gen[:6], text[:6])
    flex_split.update(gen[6:], text[6:])
    flex_whole.update(gen, text)
    torch.testing.assert_close(flex_split.compute(), flex_whole.compute())
    assert flex_split.se() == pytest.approx(flex_whole.se())
    flex_whole.reset()
    flex_whole.update(gen, gen * 3.0)  # unnormalized copies: cosine 1
    assert flex_whole.compute().item() == pytest.approx(1.0, abs=1e-6)


def test_flexibility_broadcasts_one_text_row():
    images = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    text = torch.randn(8, generator=torch.Generator().manual_seed(3))
    one, many = FlexibilityScore(), FlexibilityScore()
    one.update(images, text)
    many.update(images, text.expand(5, 8))
    torch.testing.assert_close(one.compute(), many.compute())


def test_metric_bad_inputs(ref_features):
    with pytest.raises(ValueError, match="reference_features"):
        FidelityScore(torch.zeros(0, 32))
    metric = FidelityScore(ref_features)
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        metric.update(torch.zeros(2, 16))
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        metric.update(torch.zeros(32))
    with pytest.raises(ValueError, match="rows"):
        FlexibilityScore().update(torch.zeros(3, 8), torch.zeros(2, 8))


def test_scorer_bad_inputs(scorer):
    with pytest.raises(TypeError, match="PIL"):
        scorer.image_features([np.zeros((8, 8, 3))])
    with pytest.raises(TypeError, match="list of strings"):
        scorer.text_features("one string")


# --- checkpoint scoring ----------------------------------------------------------------


def test_score_checkpoint(scorer, ref_features):
    scores = score_checkpoint(
        scorer,
        ref_features,
        {"[name]": REFERENCE[:2], "1girl, [name], standing": REFERENCE[2:]},
        {"[name], wearing a swimsuit": [noise(0), noise(1)], "[name], from behind": []},
    )
    means = {FIDELITY, FIDELITY_BEST_MATCH, FLEXIBILITY}
    assert set(scores) == means | {m + "_se" for m in means}
    assert scores[FIDELITY_BEST_MATCH] == pytest.approx(1.0, abs=1e-6)
    assert scores[FIDELITY_BEST_MATCH + "_se"] == pytest.approx(0.0, abs=1e-6)  # every image is a reference
    assert all(isinstance(v, float) and -1.0 <= v <= 1.0 + 1e-6 for v in scores.values())
    text = scorer.text_features(["wearing a swimsuit"])
    sims = (scorer.image_features([noise(0), noise(1)]) @ text.T)[:, 0]
    assert scores[FLEXIBILITY] == pytest.approx(sims.mean().item(), abs=1e-6)
    assert scores[FLEXIBILITY + "_se"] == pytest.approx(sims.std().item() / 2**0.5, abs=1e-6)  # std / sqrt(n)
    per_image = (F.normalize(scorer.image_features(REFERENCE), dim=-1) @ ref_features.T).mean(dim=1)
    assert scores[FIDELITY + "_se"] == pytest.approx(per_image.std().item() / 2, abs=1e-6)  # 4 images


def test_fidelity_per_image_scores_average_to_the_score(scorer, ref_features):
    got = fidelity_scores(scorer, ref_features, {"a": [noise(3), noise(4)], "b": [noise(5)]})
    assert len(got.per_image) == 3
    assert sum(got.per_image) / 3 == pytest.approx(got.scores[FIDELITY], abs=1e-6)
    assert fidelity_scores(scorer, ref_features, {"a": []}) == ({}, [])


def test_score_checkpoint_leaves_out_groups_without_images(scorer, ref_features):
    one = score_checkpoint(scorer, ref_features, {"[name]": [noise(2)]}, {})
    assert set(one) == {FIDELITY, FIDELITY_BEST_MATCH, FIDELITY + "_se", FIDELITY_BEST_MATCH + "_se"}
    assert math.isnan(one[FIDELITY + "_se"])  # one image: no standard error
    assert score_checkpoint(scorer, ref_features, {}, {}) == {}


def test_reference_reading_skips_unreadable_files(scorer, reference_dir, caplog):
    (reference_dir / "broken.png").write_bytes(b"\x89PNG garbage")
    (reference_dir / "notes.txt").write_text("not an image")
    feats = scorer.image_features(read_reference_images(reference_dir))
    torch.testing.assert_close(feats, scorer.image_features(REFERENCE))
    assert "broken.png" in caplog.text


def test_reference_reading_without_images_is_a_user_error(scorer, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="no readable images"):
        read_reference_images(tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        read_reference_images(tmp_path / "nope")


# --- config validation -----------------------------------------------------------------


def eval_config(reference_dir, weights_file, **changes) -> EvalConfig:
    base = {"reference": str(reference_dir), "clip_model": TINY, "clip_pretrained": str(weights_file)}
    return EvalConfig(**{**base, **changes})


def test_validate_eval_config_returns_a_working_scorer(reference_dir, weights_file, scorer):
    loaded = validate_eval_config(eval_config(reference_dir, weights_file)).scorer
    torch.testing.assert_close(loaded.image_features(REFERENCE[:1]), scorer.image_features(REFERENCE[:1]))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompts": ["1girl, standing"]}, r"eval\.prompts: '1girl, standing' has no \[name\]"),
        ({"prompts": []}, r"eval\.prompts is empty"),
        ({"flexibility_prompts": ["outdoors"]}, r"eval\.flexibility_prompts: 'outdoors' has no \[name\]"),
        ({"flexibility_prompts": ["[name], "]}, r"nothing besides \[name\]"),
        ({"clip_model": "ViT-L-15"}, r"eval\.clip_model 'ViT-L-15'"),
        ({"clip_pretrained": "/nowhere/clip.bin"}, r"eval\.clip_pretrained: /nowhere/clip\.bin not found"),
        ({"reference": None}, r"eval\.reference is not set"),
        ({"reference": "/nowhere/art"}, r"eval\.reference: /nowhere/art is not a folder"),
    ],
)
def test_validate_eval_config_errors(reference_dir, weights_file, changes, message):
    with pytest.raises(UserError, match=message):
        validate_eval_config(eval_config(reference_dir, weights_file, **changes))


def test_validate_eval_config_empty_reference_and_wrong_weights(
    reference_dir, weights_file, scorer, tmp_path
):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no readable images"):
        validate_eval_config(eval_config(empty, weights_file))
    partial = {k: v for k, v in scorer.model.state_dict().items() if not k.startswith("visual.")}
    torch.save(partial, tmp_path / "text_only.pt")
    with pytest.raises(UserError, match=r"text_only\.pt is not a weights file for tif-tiny-clip"):
        validate_eval_config(eval_config(reference_dir, tmp_path / "text_only.pt"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_scorer_and_metrics_match_cpu(scorer, weights_file, ref_features):
    gpu = load_clip_scorer(TINY, weights_file, device="cuda")
    feats = gpu.image_features(REFERENCE)
    assert feats.device.type == "cpu"
    torch.testing.assert_close(feats, ref_features, atol=1e-4, rtol=1e-4)
    metric = FidelityScore(ref_features).to("cuda")
    metric.update(feats)
    assert metric.compute()["best_match"].item() == pytest.approx(1.0, abs=1e-4)
