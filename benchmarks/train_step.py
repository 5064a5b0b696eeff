"""Optimizer steps per second and peak memory of our training step vs the diffusers example's.

    python benchmarks/train_step.py                  # tiny and toyworld on CPU (+ sd15-random at 512 on a GPU)
    python benchmarks/train_step.py --preset sd15-random --size 512 --steps 20

Ours: latents cached once, AdamW over only the new vectors (VPT x width), the vectors
spliced into the frozen token table. Baseline, written the way diffusers'
`textual_inversion.py` works: the VAE encodes the image on every step, the whole token
embedding matrix is trainable and handed to AdamW, and the frozen rows are copied back
after each step. Each variant runs in its own subprocess so peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def setup(preset: str, size: int, vpt: int, device: str):
    from tiframework.config import ModelConfig
    from tiframework.sd.models import load_model

    parts = load_model(ModelConfig(preset=preset))
    dtype = torch.float16 if device == "cuda" else torch.float32
    parts.to(device, dtype)
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(1, 3, size, size, generator=g) * 2 - 1).to(device, dtype)
    return parts, pixels, dtype


def noise_step(parts, latents, cond, scheduler):
    noise = torch.randn_like(latents)
    t = torch.randint(0, 1000, (latents.shape[0],), device=latents.device)
    pred = parts.unet(scheduler.add_noise(latents, noise, t), t, cond).sample
    return F.mse_loss(pred.float(), noise.float())


def run_ours(parts, pixels, dtype, vpt: int, steps: int) -> None:
    from tiframework.sd.text import encode_prompts

    scheduler = parts.noise_scheduler()
    with torch.no_grad():  # encoded once and cached, as tiframework.data.dataset does
        latents = parts.vae.encode(pixels).latent_dist.mean * parts.vae.config.scaling_factor
    vectors = torch.nn.Parameter(torch.zeros(vpt, parts.width, device=pixels.device))
    opt = torch.optim.AdamW([vectors], lr=5e-3, weight_decay=0.0)
    for _ in range(steps):
        cond = encode_prompts(parts, ["1girl, solo, benchchar"], 1, "benchchar", vectors).to(dtype)
        with torch.autocast(pixels.device.type, enabled=pixels.device.type == "cuda"):
            loss = noise_step(parts, latents, cond, scheduler)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def run_baseline(parts, pixels, dtype, vpt: int, steps: int) -> None:
    from tiframework.sd.text import tokenize

    scheduler = parts.noise_scheduler()
    table = parts.text_encoder.get_input_embeddings()
    base = table.base if hasattr(table, "base") else table
    vocab = base.num_embeddings
    # diffusers' example: add placeholder tokens, resize the table, train all of it.
    big = torch.nn.Embedding(vocab + vpt, parts.width, device=pixels.device, dtype=torch.float32)
    with torch.no_grad():
        big.weight[:vocab] = base.weight.float()
    parts.text_encoder.set_input_embeddings(big)
    parts.text_encoder.float()
    frozen = big.weight.detach().clone()
    keep = torch.ones(vocab + vpt, dtype=torch.bool, device=pixels.device)
    keep[vocab:] = False
    opt = torch.optim.AdamW([big.weight], lr=5e-3, weight_decay=1e-2)  # the example's default decay
    big.weight.requires_grad_(True)
    ids = tokenize(parts.tokenizer, ["1girl, solo, benchchar"], "benchchar", vpt, vocab).to(pixels.device)
    for _ in range(steps):
        with torch.no_grad():  # the VAE runs on every step
            latents = parts.vae.encode(pixels).latent_dist.sample() * parts.vae.config.scaling_factor
        with torch.autocast(pixels.device.type, enabled=pixels.device.type == "cuda"):
            cond = parts.text_encoder(ids).last_hidden_state.to(dtype)
            loss = noise_step(parts, latents, cond, scheduler)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # restore the rows that must not change
            big.weight[keep] = frozen[keep]


def child(args) -> None:
    device = "cuda" if args.device == "cuda" else "cpu"
    parts, pixels, dtype = setup(args.preset, args.size, args.vpt, device)
    fn = run_ours if args.variant == "ours" else run_baseline
    torch.manual_seed(0)
    fn(parts, pixels, dtype, args.vpt, 2)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn(parts, pixels, dtype, args.vpt, args.steps)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    print(json.dumps({"steps_per_s": args.steps / elapsed, "peak_mib": peak}))


def measure(preset: str, size: int, vpt: int, steps: int, device: str, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--preset", preset, "--size", str(size),
           "--vpt", str(vpt), "--steps", str(steps), "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="model preset (default: tiny on CPU, plus sd15-random on a GPU)")
    parser.add_argument("--size", type=int, help="image side (default: the preset's native size)")
    parser.add_argument("--vpt", type=int, default=16, help="vectors per token")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per variant")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    gpu = torch.cuda.is_available()
    native = {"tiny": 32, "toyworld": 64, "sd15-random": 512}
    cases = [(args.preset, args.size or native.get(args.preset, 512), args.device or ("cuda" if gpu else "cpu"))] \
        if args.preset else [("tiny", 32, "cpu"), ("toyworld", 64, "cpu")] + ([("sd15-random", 512, "cuda")] if gpu else [])
    print(f"{'preset':12} {'size':>5} {'device':6} {'variant':9} {'steps/s':>9} {'peak MiB':>9}")
    for preset, size, device in cases:
        rows = {v: measure(preset, size, args.vpt, args.steps, device, v) for v in ("baseline", "ours")}
        for v, r in rows.items():
            print(f"{preset:12} {size:5} {device:6} {v:9} {r['steps_per_s']:9.2f} {r['peak_mib']:9.0f}")
        speed = rows["ours"]["steps_per_s"] / rows["baseline"]["steps_per_s"]
        mem = rows["ours"]["peak_mib"] / rows["baseline"]["peak_mib"]
        print(f"{preset:12} {size:5} {device:6} {'ratio':9} {speed:8.2f}x {mem:8.2f}x   (ours / baseline)")
    if not gpu:
        print("no GPU: sd15-random at 512x512 is measured only where CUDA is available")


if __name__ == "__main__":
    main()
