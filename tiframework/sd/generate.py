"""Image generation with an embedding spliced in: previews during training, images for evaluation.

We run diffusers' `StableDiffusionPipeline` but hand it our own `prompt_embeds`, so
clip skip, A1111's 75-token chunking and the spliced vectors apply exactly as in
training. The VAE decoder is used only here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import diffusers
import torch
from PIL import Image

from tiframework.sd.models import SDParts, move
from tiframework.sd.text import encode_prompts

SAMPLERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}


def make_pipeline(parts: SDParts, sampler: str = "ddim"):
    scheduler = getattr(diffusers, SAMPLERS[sampler]).from_config(parts.scheduler_config)
    pipe = diffusers.StableDiffusionPipeline(
        vae=parts.preview_vae if parts.preview_vae is not None else parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(parts: SDParts, prompts: Sequence[str], seeds: Sequence[int], *, name: str | None,
             vectors: torch.Tensor | None, clip_skip: int = 1, sampler: str = "ddim", steps: int = 20,
             guidance_scale: float = 7.0, negative_prompt: str = "", width: int | None = None,
             height: int | None = None, pipe=None) -> list[list[Image.Image]]:
    """Images for each prompt (outer list) and seed (inner list); `[name]` means the embedding."""
    pipe = pipe or make_pipeline(parts, sampler)
    dtype = next(parts.unet.parameters()).dtype
    width, height = width or parts.native_size, height or parts.native_size
    out = []
    with decoder_beside_unet(pipe.vae, parts.unet.device, dtype):
        for prompt in prompts:
            text = prompt.replace("[name]", name or "")
            # Encode prompt and negative together so both get the same number of 77-token chunks.
            embeds = encode_prompts(parts, [text, negative_prompt], clip_skip, name, vectors).to(dtype)
            # All seeds in one call: one generator per image gives each seed exactly the
            # starting noise it gets alone, at a fraction of the per-call overhead.
            n = len(seeds)
            result = pipe(
                prompt_embeds=embeds[:1].expand(n, -1, -1), negative_prompt_embeds=embeds[1:].expand(n, -1, -1),
                num_inference_steps=steps, guidance_scale=guidance_scale, width=width, height=height,
                generator=[torch.Generator(device="cpu").manual_seed(s) for s in seeds], output_type="pil",
            )
            out.append(list(result.images))
    return out


@contextlib.contextmanager
def decoder_beside_unet(vae: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """The VAE on the UNet's device (and in its dtype) for the call, back on its own device after.

    Training on a GPU keeps the VAE on the CPU once latents are cached (its memory goes to
    the training step); previews and evaluation borrow it. On a GPU it decodes one image at
    a time (diffusers' slicing): a batch of 512 px images at once can need more memory
    than the training step itself.
    """
    home = next(vae.parameters()).device
    if device.type == "cuda":
        vae.enable_slicing()
    move(vae, device, dtype)
    try:
        yield
    finally:
        move(vae, home)
