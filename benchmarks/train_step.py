"""Training speed: the project's real step vs the diffusers example's, measured in the same run.

    python benchmarks/train_step.py                            # tiny and toyworld on CPU (+ sd15-random at 512 on a GPU)
    python benchmarks/train_step.py --preset toyworld --batch 1 4 --steps 60
    python benchmarks/train_step.py --preset toyworld --compile # adds ours with training.compile=true

ours: `tiframework.training.train.train(cfg)`, the run a user starts (Lightning loop, data
  loader with tag shuffling, cached latents, AdamW over only the new vectors, the metrics
  and vector-norm callbacks; W&B, saves, previews and evaluation off), with the defaults
  the machine resolves to. A callback times the optimizer steps after the warm-up.
baseline: the diffusers `textual_inversion.py` example's way, in its own loop: every step
  reads and resizes the images from disk and encodes them with the VAE, the whole token
  table (resized for the new tokens) is trained by AdamW (its default weight decay 1e-2)
  and the frozen rows are copied back after each step; everything float32 (the example
  without --mixed_precision).

Both train VPT 16 on the same generated dataset (noise images at the preset's native size,
booru captions). Each variant runs in its own process, so peak memory is its own. On a
GPU the table adds model FLOP utilisation: FLOPs of one step counted by torch's
`FlopCounterMode` (without checkpointing's recomputation), over the device's bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image

from tiframework.config import ExperimentConfig, load_config
from tiframework.data.latents import load_pixels
from tiframework.sd.models import load_model
from tiframework.sd.text import tokenize
from tiframework.sizing.fakestep import step_flops
from tiframework.training.train import train

NATIVE = {"tiny": 32, "toyworld": 64, "sd15-random": 512}
TAGS = ["1girl", "solo", "long hair", "pink hair", "green eyes", "hat", "green dress", "smile", "looking at viewer",
        "outdoors", "standing", "bangs", "blush", "short sleeves", "upper body", "day", "sky", "flower"]
NAME, VPT = "benchchar", 16
VARIANTS = {"ours": [], "ours-no-ckpt": ["training.gradient_checkpointing=false"],
            "ours-compile": ["training.compile=true"]}


def make_dataset(folder: Path, size: int, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
        tags = [TAGS[j] for j in rng.permutation(len(TAGS))[:12]]
        (folder / f"{i:02d}.txt").write_text(", ".join(tags), encoding="utf-8")
    return folder


def run_config(args, work: Path, variant: str) -> ExperimentConfig:
    return load_config(None, [
        f"model.preset={args.preset}", f"data.path={args.data}", f"data.max_side={args.size}",
        f"data.cache_dir={work / 'cache'}", f"embedding.name={NAME}", f"embedding.vectors_per_token={VPT}",
        "embedding.init_text=''", f"training.batch_size={args.batch}", f"training.max_steps={args.warmup + args.steps}",
        f"training.device={args.device}", "training.save_every=0", "preview.every=0", "eval.every=0",
        "logging.wandb=false", "logging.progress_bar=false", f"logging.runs_dir={work / 'runs'}",
        *VARIANTS[variant],
    ])


def clock() -> tuple[float, float]:
    """(wall, this process's CPU) seconds: CPU time per step stays meaningful on a busy machine
    when the run uses one thread (--threads 1), wall time does not."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def rates(times: list[tuple[float, float]], warmup: int) -> dict:
    """Steps/s (wall) and CPU ms per step over the steps after the warm-up."""
    (w0, c0), (w1, c1), n = times[warmup - 1], times[-1], len(times) - warmup
    return {"steps_per_s": n / (w1 - w0), "cpu_ms_per_step": 1000 * (c1 - c0) / n}


class StepTimer(pl.Callback):
    """Times optimizer steps after the warm-up (compilation, first allocations, caches)."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.times.append(clock())


def run_ours(args, variant: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="tif-bench-") as tmp:
        cfg = run_config(args, Path(tmp), variant)
        parts = load_model(cfg.model)
        timer = StepTimer()
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        summary = train(cfg, parts=parts, extra_callbacks=[timer])
        return rates(timer.times, args.warmup) | {"runtime": summary["runtime"]}


def run_baseline(args) -> dict:
    """The diffusers example's training step, float32, in its own loop."""
    device = args.device
    parts = load_model(load_config(None, [f"model.preset={args.preset}"]).model)
    parts.to(device, torch.float32)
    images = sorted(Path(args.data).glob("*.png"))
    captions = [p.with_suffix(".txt").read_text(encoding="utf-8") for p in images]
    scheduler = parts.noise_scheduler()
    table = parts.text_encoder.get_input_embeddings()
    base = getattr(table, "base", table)
    vocab = base.num_embeddings
    # The example adds the placeholder tokens, resizes the table and trains all of it.
    big = torch.nn.Embedding(vocab + VPT, parts.width, device=device)
    with torch.no_grad():
        big.weight[:vocab] = base.weight
    parts.text_encoder.set_input_embeddings(big)
    frozen = big.weight.detach().clone()
    keep = torch.ones(vocab + VPT, dtype=torch.bool, device=device)
    keep[vocab:] = False
    opt = torch.optim.AdamW([big.weight], lr=5e-3, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    big.weight.requires_grad_(True)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(args.warmup + args.steps):
        pick = rng.choice(len(images), args.batch, replace=False)
        pixels = torch.stack([load_pixels(images[i], (args.size, args.size)) for i in pick]).to(device)
        ids = tokenize(parts.tokenizer, [f"{captions[i]}, {NAME}" for i in pick], NAME, VPT, vocab).to(device)
        latents = parts.vae.encode(pixels).latent_dist.sample().detach() * parts.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), device=device)
        cond = parts.text_encoder(ids)[0]
        pred = parts.unet(scheduler.add_noise(latents, noise, t), t, cond).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():  # the rows that must not change
            big.weight[keep] = frozen[keep]
        times.append(clock())
    return rates(times, args.warmup)


def child(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = run_baseline(args) if args.variant == "baseline" else run_ours(args, args.variant)
    out["peak_mib"] = (torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda"
                       else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB -> MiB (Linux)
    print(json.dumps(out))


def measure(args, preset: str, size: int, batch: int, device: str, variant: str, data: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--preset", preset, "--size", str(size),
           "--batch", str(batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", device,
           "--data", str(data)] + (["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def device_peak_flops() -> float | None:
    """The GPU's dense bf16 peak in FLOP/s (torch inductor's datasheet table, else Triton's estimate)."""
    try:
        from torch._inductor.utils import get_device_tflops  # private, but torch's own table

        tflops = get_device_tflops(torch.bfloat16)
        return tflops * 1e12 if tflops else None
    except Exception:  # an unknown GPU or a missing Triton: no MFU column, rather than a wrong one
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="model preset (default: tiny and toyworld on CPU, sd15-random on a GPU)")
    parser.add_argument("--size", type=int, help="image side (default: the preset's native size)")
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes (default: 1 on CPU, 1 and 8 on a GPU)")
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per variant (default: 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: 5)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda for sd15-random when available")
    parser.add_argument("--compile", action="store_true", help="also time ours with training.compile=true")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: torch's; 1 makes the CPU "
                        "ms/step column trustworthy on a busy machine)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.batch = args.batch[0]
        child(args)
        return 0
    gpu = torch.cuda.is_available()
    if args.preset:
        device = args.device or ("cuda" if gpu and args.preset == "sd15-random" else "cpu")
        cases = [(args.preset, args.size or NATIVE.get(args.preset, 512), device)]
    else:
        cases = [("tiny", 32, "cpu"), ("toyworld", 64, "cpu")] + ([("sd15-random", 512, "cuda")] if gpu else [])
    peak = device_peak_flops() if gpu else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="tif-bench-data-") as tmp:
        for preset, size, device in cases:
            batches = args.batch or ([1, 8] if device == "cuda" else [1])
            data = make_dataset(Path(tmp) / f"{preset}-{size}", size, max(8, 2 * max(batches)))
            ours = ["ours"] + (["ours-no-ckpt"] if device == "cuda" else []) + (["ours-compile"] if args.compile else [])
            for batch in batches:
                flops = step_flops(load_config(None, [f"model.preset={preset}", f"embedding.name={NAME}",
                                                      f"embedding.vectors_per_token={VPT}"]), size, batch)
                base = measure(args, preset, size, batch, device, "baseline", data)
                rows.append({"preset": preset, "size": size, "batch": batch, "device": device, "variant": "baseline",
                             **base, "ratio": 1.0, "cpu_ratio": 1.0})
                for variant in ours:
                    r = measure(args, preset, size, batch, device, variant, data)
                    mfu = flops * r["steps_per_s"] / peak if peak and device == "cuda" else None
                    rows.append({"preset": preset, "size": size, "batch": batch, "device": device, "variant": variant,
                                 **r, "ratio": r["steps_per_s"] / base["steps_per_s"], "mfu": mfu,
                                 "cpu_ratio": base["cpu_ms_per_step"] / r["cpu_ms_per_step"],
                                 "gflop_per_step": flops / 1e9})
    for r in rows:
        r["samples_per_s"] = r["steps_per_s"] * r["batch"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    name = torch.cuda.get_device_name() if gpu else "no GPU"
    print(f"Training steps/s, ours (the real `train` step) vs the diffusers example's way ({name}; "
          f"{args.steps} timed steps after {args.warmup}; torch threads: {args.threads or torch.get_num_threads()})")
    print(f"{'preset':12} {'size':>4} {'batch':>5} {'device':6} {'variant':13} {'steps/s':>8} {'samples/s':>9} "
          f"{'ratio':>6} {'CPU ms/step':>11} {'CPU ratio':>9} {'peak MiB':>8} {'GFLOP/step':>10} {'MFU':>6}  runtime")
    for r in rows:
        rt = r.get("runtime") or {}
        desc = (f"{rt['weight_dtype']}, {rt['precision']}, ckpt {'on' if rt['gradient_checkpointing'] else 'off'}"
                + (", compiled" if rt.get("compile") else "")) if rt else "float32, own loop"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        gflop = f"{r['gflop_per_step']:.1f}" if r.get("gflop_per_step") else "-"
        print(f"{r['preset']:12} {r['size']:4} {r['batch']:5} {r['device']:6} {r['variant']:13} "
              f"{r['steps_per_s']:8.2f} {r['samples_per_s']:9.2f} {r['ratio']:5.2f}x {r['cpu_ms_per_step']:11.1f} "
              f"{r['cpu_ratio']:8.2f}x {r['peak_mib']:8.0f} "
              f"{gflop:>10} {mfu:>6}  {desc}")
    if not gpu:
        print("no GPU: sd15-random at 512x512 (and MFU) is measured only where CUDA is available")
    return 0


if __name__ == "__main__":
    sys.exit(main())
