"""The proof that matters: textual inversion on a held-out character raises attribute accuracy.

A deliberately minimal TI loop (not the LightningModule): everything frozen, only the
new vectors learn, spliced in through `tiframework.text.encode_prompts`; noise-prediction
MSE on the character's training latents with prompts `<caption>, <name>`; then sample
`<name>` with diffusers' StableDiffusionPipeline and score with the attribute classifier.

    python -m tiframework.toyworld.ti_check --character kiri --steps 300 [--unpruned]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tiframework.toyworld.characters import character_images, get_character


def _latents(parts, character: str, n: int) -> tuple[torch.Tensor, list]:
    from tiframework.toyworld.batches import to_tensor
    from tiframework.toyworld.draw import render

    records = character_images(character, n, seed=0, split="train")
    with torch.no_grad():
        z = parts.vae.encode(to_tensor([render(a) for a in records])).latent_dist.mean
    return z * parts.vae.config.scaling_factor, records  # deterministic latents, as A1111's default


def init_vectors(parts, init_text: str, n_vectors: int) -> torch.Tensor:
    """Token embeddings of the init text, cycled to n_vectors (the guide's init text)."""
    ids = parts.tokenizer(init_text, add_special_tokens=False).input_ids or [parts.tokenizer.eos_token_id]
    table = parts.text_encoder.get_input_embeddings().weight
    return torch.stack([table[ids[i % len(ids)]] for i in range(n_vectors)]).detach().clone()


@torch.no_grad()
def sample(parts, prompt: str, name: str, vectors: torch.Tensor | None, n: int, seed: int, steps: int = 25,
           guidance: float = 4.0):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from tiframework.text import encode_prompts

    pipe = StableDiffusionPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=DDIMScheduler.from_config(parts.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    cond = encode_prompts(parts, [prompt] * n, name=name, vectors=vectors)
    uncond = encode_prompts(parts, [""] * n)
    gen = torch.Generator().manual_seed(seed)
    return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, height=parts.native_size,
                width=parts.native_size, num_inference_steps=steps, guidance_scale=guidance,
                generator=gen, output_type="pil").images


def train_vectors(parts, character: str, name: str, vectors: torch.Tensor, steps: int, pruned: bool,
                  lr: float = 5e-3, batch: int = 8, n_images: int = 24, seed: int = 0) -> list[float]:
    """Optimise `vectors` in place; returns the loss per step."""
    from tiframework.text import encode_prompts

    z0, records = _latents(parts, character, n_images)
    traits = set(get_character(character).trait_tags())
    captions = [", ".join(t for t in a.tags() if not (pruned and t in traits)) for a in records]
    sched, rng = parts.noise_scheduler(), random.Random(seed)
    torch.manual_seed(seed)
    vectors.requires_grad_(True)
    opt = torch.optim.AdamW([vectors], lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        idx = [rng.randrange(len(records)) for _ in range(batch)]
        prompts = [f"{captions[i]}, {name}" for i in idx]
        noise = torch.randn_like(z0[idx])
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,))
        cond = encode_prompts(parts, prompts, name=name, vectors=vectors)
        pred = parts.unet(sched.add_noise(z0[idx], noise, t), t, cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    vectors.requires_grad_(False)
    return losses


def run_check(folder: Path, character: str, steps: int, n_vectors: int, pruned: bool, n_samples: int = 32,
              init_text: str = "1girl") -> dict:
    from tiframework.models import load_diffusers_folder
    from tiframework.toyworld.classifier import AttributeClassifier, attribute_accuracy

    parts = load_diffusers_folder(Path(folder))
    for m in parts.frozen_modules():
        m.requires_grad_(False).eval()
    clf = AttributeClassifier(Path(folder) / "classifier")
    name = f"tw{character}"  # not a vocabulary word, so no real token collides
    caption = ", ".join(["1girl", "solo", *get_character(character).trait_tags()])
    result: dict = {"character": character, "steps": steps, "n_vectors": n_vectors, "pruned": pruned,
                    "init_text": init_text, "samples": n_samples}
    result["prompted_with_tags"] = attribute_accuracy(sample(parts, caption, name, None, n_samples, 1), character, clf)
    vectors = init_vectors(parts, init_text, n_vectors)
    result["step0"] = attribute_accuracy(sample(parts, name, name, vectors, n_samples, 1), character, clf)
    t0 = time.monotonic()
    losses = train_vectors(parts, character, name, vectors, steps, pruned)
    result["train_seconds"] = round(time.monotonic() - t0, 1)
    result["loss_first50"], result["loss_last50"] = (round(sum(x) / len(x), 4) for x in (losses[:50], losses[-50:]))
    images = sample(parts, name, name, vectors, n_samples, 1)
    result["trained"] = attribute_accuracy(images, character, clf)
    result["_images"] = images
    return result


def main(argv: list[str] | None = None) -> None:
    from tiframework.toyworld.build import WEIGHTS_DIR

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--character", default="kiri")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--vectors", type=int, default=2)
    ap.add_argument("--unpruned", action="store_true", help="keep trait tags in the training captions")
    ap.add_argument("--sheet", type=Path, default=None, help="save the trained samples as one PNG strip")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = run_check(args.weights, args.character, args.steps, args.vectors, not args.unpruned)
    images = result.pop("_images")
    if args.sheet:
        from PIL import Image

        strip = Image.new("RGB", (64 * len(images), 64))
        for i, im in enumerate(images):
            strip.paste(im, (64 * i, 0))
        strip.save(args.sheet)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
