"""The toy model's architectures (SD 1.x shapes, scaled down) and their shape check.

Same classes and layout as Stable Diffusion 1.x, so every loader, the LightningModule
and diffusers' pipelines run unchanged; only widths and depths are small:

- VAE: 3 blocks -> factor 4, 64x64x3 pixels <-> 16x16x4 latents.
- text encoder: CLIP text transformer with the real 49408-token BPE vocabulary,
  77 positions, width 64 (the embedding width a TI vector has here).
- UNet: 3 blocks on 16x16 latents, cross-attention to the width-64 text states.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from tiframework.errors import UserError
from tiframework.sd.tokenizer import BOS_ID, EOS_ID, MAX_LENGTH, VOCAB_SIZE

TEXT_WIDTH = 64
NATIVE_SIZE = 64
VAE_FACTOR = 4
# Bucket sides must survive VAE (x4) and the UNet's two downsamplings (x4) exactly.
BUCKET_STEP = 16

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [16, 32, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1, "norm_num_groups": 16, "sample_size": NATIVE_SIZE, "act_fn": "silu",
}
TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE, "hidden_size": TEXT_WIDTH, "intermediate_size": 4 * TEXT_WIDTH,
    "num_hidden_layers": 3, "num_attention_heads": 4, "max_position_embeddings": MAX_LENGTH,
    "projection_dim": TEXT_WIDTH, "hidden_act": "quick_gelu", "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID, "pad_token_id": EOS_ID,
}
UNET_CONFIG: dict[str, Any] = {
    "sample_size": NATIVE_SIZE // VAE_FACTOR, "in_channels": 4, "out_channels": 4,
    "block_out_channels": [32, 64, 64], "layers_per_block": 1, "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": TEXT_WIDTH, "norm_num_groups": 32, "act_fn": "silu",
}
# Stable Diffusion's own noise schedule, so TI trains against the schedule it would on SD.
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None,
}


def new_vae():
    return AutoencoderKL(**VAE_CONFIG)


def new_text_encoder():
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def new_unet():
    return UNet2DConditionModel(**UNET_CONFIG)


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}


def _expected_shapes(sub: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = {"vae": new_vae, "unet": new_unet, "text_encoder": new_text_encoder}[sub]()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def verify_weights(folder: Path) -> None:
    """UserError unless the toy-world folder holds weights of exactly the preset's shapes.

    A rebuilt model with other widths would load (its config.json agrees with itself),
    but the LightningModule, latent caches and shipped embeddings assume these shapes.
    """
    folder = Path(folder)
    info_path = folder / "tiframework.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info.get("native_size") != NATIVE_SIZE or info.get("bucket_step") != BUCKET_STEP:
        raise UserError(f"{info_path}: expected native_size {NATIVE_SIZE} and bucket_step {BUCKET_STEP}; "
                        "rebuild with `tiframework toyworld build`")
    for sub in ("vae", "unet", "text_encoder"):
        files = sorted((folder / sub).glob("*.safetensors"))
        if not files:
            raise UserError(f"{folder / sub}: no .safetensors weights; rebuild with `tiframework toyworld build`")
        found = _safetensors_shapes(files[0])
        for key, shape in _expected_shapes(sub).items():
            got = found.get(key)
            if got is not None and got != shape:
                raise UserError(f"{files[0]}: tensor {key} has shape {list(got)}, the toyworld preset expects "
                                f"{list(shape)}; these weights are not the toy-world model "
                                "(rebuild with `tiframework toyworld build`)")
