"""Image generation with an embedding: previews during training and images for evaluation.

We run diffusers' `StableDiffusionPipeline` but hand it our own `prompt_embeds`, so
clip skip, A1111's 75-token chunking and the spliced vectors apply exactly as in
training. The VAE decoder is used only here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from tiframework.fileio import atomic_path
from tiframework.models import SDParts
from tiframework.text import encode_prompts

SAMPLERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}


def make_pipeline(parts: SDParts, sampler: str = "ddim"):
    import diffusers

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


def save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def grid(rows: Sequence[Sequence[Image.Image]], labels: Sequence[str] | None = None) -> Image.Image:
    """Images in a grid (rows x columns), each column optionally labelled on top."""
    w, h = rows[0][0].size
    pad = 14 if labels else 0
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * w, pad + len(rows) * h), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(labels or []):
        draw.text((c * w + 2, 1), label, fill="black")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            canvas.paste(img.convert("RGB"), (c * w, pad + r * h))
    return canvas


_STEP_FILE = re.compile(r"step-(\d+)-(\d+)\.png$")


def update_strips(folder: Path) -> list[Path]:
    """One `strip-<k>.png` per prompt: every saved step of prompt k, left to right."""
    found: dict[int, dict[int, Path]] = {}
    for path in folder.glob("step-*.png"):
        m = _STEP_FILE.search(path.name)
        if m:
            step, k = map(int, m.groups())
            found.setdefault(k, {})[step] = path
    written = []
    for k, by_step in sorted(found.items()):
        steps = sorted(by_step)
        cells = [Image.open(by_step[st]).convert("RGB") for st in steps]
        target = folder / f"strip-{k}.png"
        save_png(grid([cells], [str(st) for st in steps]), target)
        written.append(target)
    return written


def save_previews(images: list[list[Image.Image]], folder: Path, step: int) -> list[Path]:
    """`step-<step>-<k>.png` for prompt k (its seeds side by side), then refresh the strips."""
    paths = []
    for k, per_seed in enumerate(images):
        path = folder / f"step-{step:06d}-{k}.png"
        save_png(grid([per_seed]), path)
        paths.append(path)
    update_strips(folder)
    return paths
