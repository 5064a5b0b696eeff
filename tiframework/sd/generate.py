"""Image generation with an embedding spliced in: previews during training, images for evaluation.

We run diffusers' `StableDiffusionPipeline` but hand it our own `prompt_embeds`, so
clip skip, A1111's 75-token chunking and the spliced vectors apply exactly as in
training. The VAE decoder is used only here.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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


# On a CPU an image costs more in a big sampler call than in a few calls of a hundred or so
# (a batch's activations no longer fit the cache). The toy world's UNet on one thread costs
# 8.7-8.9 ms a sample in batches of 64-256, 10.3 ms at 512 and 11.7 ms at 1024 (with guidance
# an image is two samples). benchmarks/population_eval.py (RESULTS.md, "Images per sampler call
# on a CPU"): 16 members' evaluations took 153.6 s in calls of 512 images and 113.4 s in calls of
# 128, the same rows.
CPU_ROWS_PER_CALL = 128


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


@dataclass
class ImageRequest:
    """Images of one prompt, one per seed, for one embedding (`[name]` in the prompt means `vectors`)."""

    prompt: str
    seeds: list[int]
    name: str | None
    vectors: torch.Tensor | None  # (VPT, width)
    clip_skip: int = 1


def _sample(pipe, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor, seeds: Sequence[int], steps: int,
            guidance_scale: float, width: int, height: int) -> list[Image.Image]:
    """One sampler call, one row per seed. One generator per image gives each seed exactly
    the starting noise it gets alone, so rows may come from any prompt or embedding."""
    result = pipe(
        prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, num_inference_steps=steps,
        guidance_scale=guidance_scale, width=width, height=height,
        generator=[torch.Generator(device="cpu").manual_seed(s) for s in seeds], output_type="pil",
    )
    return list(result.images)


def _embeds(parts: SDParts, request: ImageRequest, negative_prompt: str, dtype: torch.dtype) -> torch.Tensor:
    """(2, chunks*77, width): the prompt and the negative prompt, encoded together so both
    get the same number of 77-token chunks."""
    text = request.prompt.replace("[name]", request.name or "")
    return encode_prompts(parts, [text, negative_prompt], request.clip_skip, request.name, request.vectors).to(dtype)


@torch.no_grad()
def generate(parts: SDParts, prompts: Sequence[str], seeds: Sequence[int], *, name: str | None,
             vectors: torch.Tensor | None, clip_skip: int = 1, sampler: str = "ddim", steps: int = 20,
             guidance_scale: float = 7.0, negative_prompt: str = "", width: int | None = None,
             height: int | None = None, pipe=None) -> list[list[Image.Image]]:
    """Images for each prompt (outer list) and seed (inner list); `[name]` means the embedding.

    One sampler call per prompt, all its seeds at once."""
    pipe = pipe or make_pipeline(parts, sampler)
    dtype = next(parts.unet.parameters()).dtype
    width, height = width or parts.native_size, height or parts.native_size
    out = []
    with decoder_beside_unet(pipe.vae, parts.unet.device, dtype):
        for prompt in prompts:
            embeds = _embeds(parts, ImageRequest(prompt, list(seeds), name, vectors, clip_skip), negative_prompt, dtype)
            n = len(seeds)
            out.append(_sample(pipe, embeds[:1].expand(n, -1, -1), embeds[1:].expand(n, -1, -1), seeds, steps,
                               guidance_scale, width, height))
    return out


@torch.no_grad()
def generate_requests(parts: SDParts, requests: Sequence[ImageRequest], *, max_images: int | None = None,
                      sampler: str = "ddim", steps: int = 20, guidance_scale: float = 7.0,
                      negative_prompt: str = "", width: int | None = None, height: int | None = None,
                      pipe=None) -> list[list[Image.Image]]:
    """Images for each request (outer list) and its seeds (inner list), many requests per
    sampler call: rows of different prompts and embeddings share the UNet's batches.

    Each image equals the one `generate` draws for its prompt, seed and embedding alone, up
    to the float rounding of batched kernels (nothing in sampling mixes rows: noise per
    seed, GroupNorm and attention per sample). Requests whose prompts need different
    numbers of 77-token chunks go to different calls; `max_images` bounds the rows of one
    call (None: a group's rows at once), so memory stays bounded, and on a CPU no call has
    more than CPU_ROWS_PER_CALL rows; a group's rows are split into calls of near-equal size.
    A seed asked for twice with the same prompt embeddings (two arms of one training seed at
    step 0, both still at the init text) is drawn once and handed to both.
    """
    pipe = pipe or make_pipeline(parts, sampler)
    dtype = next(parts.unet.parameters()).dtype
    width, height = width or parts.native_size, height or parts.native_size
    keys = []  # per request: its prompt embeddings' bytes (equal bytes, equal images)
    images: dict[tuple[bytes, int], Image.Image | None] = {}
    with decoder_beside_unet(pipe.vae, parts.unet.device, dtype):
        rows_by_length: dict[int, list[tuple[bytes, int, torch.Tensor]]] = {}  # chunks -> (key, seed, embeds)
        for request in requests:
            embeds = _embeds(parts, request, negative_prompt, dtype)
            key = embeds.detach().to("cpu", torch.float32).numpy().tobytes()  # exact for fp16/bf16 too
            keys.append(key)
            rows = rows_by_length.setdefault(embeds.shape[1], [])
            for seed in request.seeds:
                if (key, seed) not in images:
                    images[(key, seed)] = None  # drawn once, however many requests ask for it
                    rows.append((key, seed, embeds))
        for rows in rows_by_length.values():
            limit = max_images or len(rows)
            if parts.unet.device.type == "cpu":
                limit = min(limit, CPU_ROWS_PER_CALL)
            for call in _near_equal(rows, limit):
                drawn = _sample(pipe, torch.cat([e[:1] for _, _, e in call]), torch.cat([e[1:] for _, _, e in call]),
                                [seed for _, seed, _ in call], steps, guidance_scale, width, height)
                for (key, seed, _), image in zip(call, drawn, strict=True):
                    images[(key, seed)] = image
    return [[images[(key, seed)] for seed in request.seeds] for key, request in zip(keys, requests, strict=True)]


def _near_equal(rows: list, limit: int) -> list[list]:
    """`rows` in consecutive calls of at most `limit` rows each, as equal in size as can be."""
    if not rows:
        return []
    calls = -(-len(rows) // limit)
    size, extra = divmod(len(rows), calls)
    bounds = [i * size + min(i, extra) for i in range(calls + 1)]
    return [rows[a:b] for a, b in itertools.pairwise(bounds)]


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
