"""The model adapter: presets, clip skip, diffusers folders and single-file checkpoints."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from ldm_export import to_ldm_state_dict
from tiframework.config import ModelConfig
from tiframework.errors import UserError
from tiframework.sd.models import CONFIG_ROOT, TOYWORLD_DIR, load_model, load_single_file
from tiframework.sd.text import encode_prompts, tokenize

TINY_CONFIGS = CONFIG_ROOT / "tiny"


def assert_same_outputs(a, b) -> None:
    """The UNet, VAE and text encoder of `a` and `b` compute the same thing."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=gen)
    cond = torch.randn(2, 77, 32, generator=gen)
    pixels = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    ids = tokenize(a.tokenizer, ["a photo of a cat", "1girl, solo"], None, 0, a.vocab_size)
    with torch.no_grad():
        for name in ("unet", "vae", "text_encoder"):
            sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
            assert sa.keys() == sb.keys(), name
            assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        t = torch.tensor([10, 500])
        assert torch.equal(a.unet(latents, t, cond).sample, b.unet(latents, t, cond).sample)
        assert torch.equal(a.vae.encode(pixels).latent_dist.mean, b.vae.encode(pixels).latent_dist.mean)
        assert torch.equal(a.vae.decode(latents[:1]).sample, b.vae.decode(latents[:1]).sample)
        assert torch.equal(a.text_encoder(ids).last_hidden_state, b.text_encoder(ids).last_hidden_state)


# ------------------------------------------------------------------ presets


def test_tiny_preset(tiny_parts):
    p = tiny_parts
    assert (p.width, p.vocab_size, p.vae_scale_factor) == (32, 49408, 2)
    assert (p.native_size, p.bucket_step, p.prediction_type) == (32, 8, "epsilon")
    assert (p.source, p.checkpoint_name, p.checkpoint_hash) == ("preset:tiny", "tiny", None)
    assert all(not prm.requires_grad for m in p.frozen_modules() for prm in m.parameters())
    assert not p.unet.training


def test_same_seed_same_weights_other_seed_differs(tiny_parts, make_tiny_parts):
    again = make_tiny_parts()
    assert torch.equal(again.unet.conv_in.weight, tiny_parts.unet.conv_in.weight)
    assert not torch.equal(make_tiny_parts(seed=1).unet.conv_in.weight, tiny_parts.unet.conv_in.weight)


@pytest.mark.slow
def test_sd15_random_preset_has_sd15_shapes():
    # Shapes, not values: built on the meta device, so no 4 GB of random weights are filled on a CPU.
    with torch.device("meta"):
        p = load_model(ModelConfig(preset="sd15-random"))
    assert (p.width, p.native_size, p.vae_scale_factor) == (768, 512, 8)
    assert p.unet.config.cross_attention_dim == 768
    assert sum(w.numel() for w in p.unet.parameters()) == 859_520_964  # SD1.5's UNet


def test_toyworld_without_weights_says_how_to_build_them():
    if (TOYWORLD_DIR / "model_index.json").is_file():
        assert load_model(ModelConfig(preset="toyworld")).source == "preset:toyworld"
    else:
        with pytest.raises(UserError, match="toyworld build"):
            load_model(ModelConfig(preset="toyworld"))


# ------------------------------------------------------------------ clip skip


def test_clip_skip(tiny_parts):
    prompts = ["a photo of a cat", "1girl, solo, red eyes"]
    last = encode_prompts(tiny_parts, prompts, clip_skip=1)
    skip2 = encode_prompts(tiny_parts, prompts, clip_skip=2)
    assert last.shape == skip2.shape == (2, 77, 32)
    assert not torch.allclose(last, skip2)

    te = tiny_parts.text_encoder
    ids = tokenize(tiny_parts.tokenizer, prompts, None, 0, tiny_parts.vocab_size)
    with torch.no_grad():
        out = te(ids, output_hidden_states=True)
    final_norm = getattr(te, "text_model", te).final_layer_norm
    assert torch.equal(last, out.last_hidden_state)
    # A1111's clip skip 2: the penultimate layer, through the final layer norm
    assert torch.equal(skip2, final_norm(out.hidden_states[-2]))


# ------------------------------------------------------------------ bad sources


def test_unknown_preset_and_missing_path(tmp_path):
    with pytest.raises(UserError, match="unknown preset 'sd99'.*tiny"):
        load_model(ModelConfig(preset="sd99"))
    with pytest.raises(UserError, match="model not found"):
        load_model(ModelConfig(path=str(tmp_path / "nope.safetensors")))
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(UserError, match="unknown model format"):
        load_model(ModelConfig(path=str(tmp_path / "model.onnx")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"not a diffusers Stable Diffusion folder \(no unet/\)"):
        load_model(ModelConfig(path=str(tmp_path / "empty")))


def test_broken_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError, match="broken.safetensors: could not load as an SD 1.x checkpoint"):
        load_single_file(path, config_folder=TINY_CONFIGS)


# ------------------------------------------------------------------ diffusers folder


def test_diffusers_folder_round_trip(tmp_path, make_tiny_parts):
    parts = make_tiny_parts()
    folder = tmp_path / "tiny-diffusers"
    parts.unet.save_pretrained(folder / "unet")
    parts.vae.save_pretrained(folder / "vae")
    parts.text_encoder.save_pretrained(folder / "text_encoder")
    parts.tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(
        (TINY_CONFIGS / "scheduler" / "scheduler_config.json").read_text())

    loaded = load_model(ModelConfig(path=str(folder)))
    assert loaded.source == str(folder)
    assert (loaded.native_size, loaded.bucket_step) == (parts.native_size, parts.bucket_step)
    assert loaded.scheduler_config == parts.scheduler_config
    assert_same_outputs(parts, loaded)


# ------------------------------------------------------------------ single-file checkpoints


@pytest.fixture(scope="module")
def ldm_checkpoint(tmp_path_factory):
    """The tiny parts as an original-layout `.safetensors` and `.ckpt`, with their source parts."""
    from safetensors.torch import save_file

    from tiframework.sd.models import build_random

    parts = build_random("tiny")
    state = to_ldm_state_dict(parts)
    folder = tmp_path_factory.mktemp("ldm")
    save_file(state, str(folder / "tiny.safetensors"))
    torch.save({"state_dict": state}, folder / "tiny.ckpt")
    return parts, folder


def test_ldm_export_layout(ldm_checkpoint):
    parts, folder = ldm_checkpoint
    from safetensors import safe_open

    with safe_open(str(folder / "tiny.safetensors"), framework="pt") as fh:
        keys = set(fh.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in keys
    # one layer per block: input 1 = level-0 resnet + attention, 2 = its downsampler
    assert "model.diffusion_model.input_blocks.2.0.op.weight" in keys
    assert "model.diffusion_model.output_blocks.1.1.conv.weight" in keys  # upsampler after a plain resnet
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "first_stage_model.decoder.up.1.upsample.conv.weight" in keys
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    n_params = sum(len(getattr(parts, m).state_dict()) for m in ("unet", "vae", "text_encoder"))
    assert len(keys) == n_params


@pytest.mark.parametrize("filename", ["tiny.safetensors", "tiny.ckpt"])
def test_single_file_checkpoint_loads_to_the_same_model(ldm_checkpoint, filename):
    parts, folder = ldm_checkpoint
    loaded = load_single_file(folder / filename, config_folder=TINY_CONFIGS)
    assert loaded.source == str(folder / filename)
    assert (loaded.native_size, loaded.bucket_step) == (32, 8)
    digest = hashlib.sha256((folder / filename).read_bytes()).hexdigest()[:10]
    assert loaded.checkpoint_hash == digest and loaded.checkpoint_name == "tiny"
    assert_same_outputs(parts, loaded)


class _CreatesFile:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_malicious_ckpt_is_refused_not_run(tmp_path):
    planted = tmp_path / "pwned"
    torch.save({"state_dict": {"x": _CreatesFile(planted)}}, tmp_path / "evil.ckpt")
    (tmp_path / "evil_legacy.ckpt").write_bytes(pickle.dumps({"state_dict": _CreatesFile(planted)}, protocol=2))
    for name in ("evil.ckpt", "evil_legacy.ckpt"):
        with pytest.raises(UserError, match=f"{name}: could not load"):
            load_single_file(tmp_path / name, config_folder=TINY_CONFIGS)
    assert not planted.exists()


def test_ldm_export_reproduces_the_diffusers_script_for_sd15():
    """For SD 1.5's layout, our generalised map equals the hard-coded one in diffusers'
    scripts/convert_diffusers_to_original_stable_diffusion.py."""
    import json
    from types import SimpleNamespace

    from ldm_export import unet_prefix_map, vae_prefix_map

    unet_cfg = SimpleNamespace(**json.loads((CONFIG_ROOT / "sd15" / "unet" / "config.json").read_text()))
    expected = {}
    for i in range(4):
        for j in range(2):
            expected[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{3 * i + j + 1}.0."
            if i < 3:
                expected[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{3 * i + j + 1}.1."
        for j in range(3):
            expected[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{3 * i + j}.0."
            if i > 0:
                expected[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{3 * i + j}.1."
        if i < 3:
            expected[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{3 * (i + 1)}.0.op."
            expected[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}."
    ours = unet_prefix_map(unet_cfg)
    assert {k: v for k, v in ours.items() if not k.startswith("mid_block")} == expected
    assert ours["mid_block.attentions.0."] == "middle_block.1."

    vae_cfg = SimpleNamespace(**json.loads((CONFIG_ROOT / "sd15" / "vae" / "config.json").read_text()))
    vae = vae_prefix_map(vae_cfg)
    assert vae["decoder.up_blocks.0.resnets.2."] == "decoder.up.3.block.2."
    assert vae["decoder.up_blocks.2.upsamplers.0."] == "decoder.up.1.upsample."
    assert vae["encoder.down_blocks.3.resnets.1."] == "encoder.down.3.block.1."
    assert "encoder.down_blocks.3.downsamplers.0." not in vae
