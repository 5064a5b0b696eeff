"""Test utility: diffusers SD 1.x parts -> one original LDM/CompVis-layout state dict.

Generalises diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py`,
which hard-codes SD 1.5's 4 levels x 2 layers, to any number of levels and
`layers_per_block`, so the tiny preset can be written as a single-file checkpoint and
read back through `tiframework.sd.models.load_single_file`. Only the test-suite uses it.

LDM numbering, per UNet level i with L = layers_per_block:
  input_blocks:  conv_in at 0, then per level L x [resnet, (attention)] and, except on
                 the last level, one [downsample] block;
  output_blocks: per level L+1 x [resnet, (attention), (upsample on the last one)];
  middle_block:  [resnet 0, attention, resnet 1].
"""

from __future__ import annotations

from typing import Any

import torch

UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
UNET_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
VAE_ATTN = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]


def unet_prefix_map(config: Any) -> dict[str, str]:
    """diffusers module prefix -> LDM prefix for a UNet2DConditionModel config."""
    layers = int(config.layers_per_block)
    n_levels = len(config.block_out_channels)
    out: dict[str, str] = {"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                           "mid_block.resnets.1.": "middle_block.2."}
    idx = 1
    for i, kind in enumerate(config.down_block_types):
        for j in range(layers):
            out[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{idx}.0."
            if "CrossAttn" in kind:
                out[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{idx}.1."
            idx += 1
        if i < n_levels - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{idx}.0.op."
            idx += 1
    idx = 0
    for i, kind in enumerate(config.up_block_types):
        has_attn = "CrossAttn" in kind
        for j in range(layers + 1):
            out[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{idx}.0."
            if has_attn:
                out[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{idx}.1."
            idx += 1
        if i < n_levels - 1:
            # The upsampler sits in the level's last output block, after its resnet/attention.
            out[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{idx - 1}.{2 if has_attn else 1}."
    return out


def _rename(key: str, prefixes: dict[str, str]) -> str:
    for old, new in prefixes.items():
        if key.startswith(old):
            return new + key[len(old):]
    raise KeyError(f"no LDM name for {key}")


def convert_unet(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    prefixes = {**UNET_TOP, **unet_prefix_map(unet.config)}
    out = {}
    for key, value in unet.state_dict().items():
        new = _rename(key, prefixes)
        if ".resnets." in key:
            for hf, sd in UNET_RESNET:
                new = new.replace(f".{hf}.", f".{sd}.")
        out["model.diffusion_model." + new] = value.detach().clone()
    return out


def vae_prefix_map(config: Any) -> dict[str, str]:
    n_levels = len(config.block_out_channels)
    layers = int(config.layers_per_block)
    out: dict[str, str] = {}
    for side in ("encoder", "decoder"):
        out[f"{side}.mid_block.resnets.0."] = f"{side}.mid.block_1."
        out[f"{side}.mid_block.resnets.1."] = f"{side}.mid.block_2."
        out[f"{side}.mid_block.attentions.0."] = f"{side}.mid.attn_1."
        out[f"{side}.conv_norm_out."] = f"{side}.norm_out."
    for i in range(n_levels):
        for j in range(layers):
            out[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        if i < n_levels - 1:
            out[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        # LDM numbers decoder levels from the lowest resolution up; diffusers the reverse.
        up = n_levels - 1 - i
        for j in range(layers + 1):
            out[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{up}.block.{j}."
        if i < n_levels - 1:
            out[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{up}.upsample."
    return out


def convert_vae(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    prefixes = vae_prefix_map(vae.config)
    out = {}
    for key, value in vae.state_dict().items():
        new = next((n + key[len(o):] for o, n in prefixes.items() if key.startswith(o)), key)
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in new:
            for hf, sd in VAE_ATTN:
                new = new.replace(f".attn_1.{hf}", f".attn_1.{sd}")
            if value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)  # LDM's attention uses 1x1 convs
        out["first_stage_model." + new] = value.detach().clone()
    return out


def convert_text_encoder(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """HF CLIP keys under `cond_stage_model.transformer.text_model.` (transformers 4.x layout)."""
    out = {}
    for key, value in text_encoder.state_dict().items():
        key = key.removeprefix("text_model.")  # transformers 4.x nests; 5.x does not
        # tiframework.sd.text wraps the token table once prompts were encoded with it.
        key = key.replace("token_embedding.base.", "token_embedding.")
        out["cond_stage_model.transformer.text_model." + key] = value.detach().clone()
    return out


def to_ldm_state_dict(parts: Any) -> dict[str, torch.Tensor]:
    """The UNet, VAE and text encoder of `parts` as one original-layout state dict."""
    return {**convert_unet(parts.unet), **convert_vae(parts.vae), **convert_text_encoder(parts.text_encoder)}
