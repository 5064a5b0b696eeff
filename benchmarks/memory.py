"""Peak memory of one training step: the project's own step, SD 1.5 at 512x512, by batch and variant.

    python benchmarks/memory.py                        # sd15-random, 512 px, batch 1 4 8, all variants
    python benchmarks/memory.py --batch 1 --json       # rows {preset, size, batch, variant, peak_gib, method}

Variants (config overrides of the same run):
  fp32             the old default: float32 frozen weights, no gradient checkpointing, VAE kept on the GPU
  default          what the defaults resolve to on a CUDA GPU with bf16: bf16 weights, checkpointing, VAE offloaded
  default-no-ckpt  the default without gradient checkpointing

The step is `TextualInversionModule.training_step` under Lightning's autocast, the backward
pass and the AdamW step (see `tiframework.sizing.memory`). Without CUDA the peak is
estimated on fake tensors with torch's MemTracker (method `estimated`), CUDA autocast
emulated and checked against CUDA autocast op for op; with CUDA it is also measured
(`torch.cuda.max_memory_allocated`, method `measured-cuda`) and the estimate printed beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from tiframework.config import ExperimentConfig, load_config
from tiframework.sd.models import load_model
from tiframework.sizing.fakestep import autocast_mismatches
from tiframework.sizing.memory import estimate_step_memory, measure_step_memory

VARIANTS = {
    "fp32": ["model.dtype=float32", "training.gradient_checkpointing=false", "training.offload_vae=false"],
    "default": [],
    "default-no-ckpt": ["training.gradient_checkpointing=false"],
}
TARGET_GIB = 3.0  # the new default at batch 1 must fit a 4 GB card with room for the CUDA context


def variant_config(preset: str, variant: str) -> ExperimentConfig:
    # The guide's VPT 16 and template; everything else is the defaults.
    return load_config(None, [f"model.preset={preset}", "embedding.name=benchchar",
                              "embedding.vectors_per_token=16", *VARIANTS[variant]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sd15-random", help="model preset (default: sd15-random)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default: 512)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8], help="batch sizes (default: 1 4 8)")
    parser.add_argument("--variant", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args()

    started = time.perf_counter()
    compared, diffs = autocast_mismatches(variant_config(args.preset, "default"), args.size)
    cuda = torch.cuda.is_available()
    parts = load_model(variant_config(args.preset, "fp32").model) if cuda else None
    rows, table = [], []
    for batch in args.batch:
        for variant in args.variant:
            cfg = variant_config(args.preset, variant)
            est = estimate_step_memory(cfg, args.size, batch)
            base = {"preset": args.preset, "size": args.size, "batch": batch, "variant": variant}
            rows.append(base | {"peak_gib": round(est.peak_gib, 3), "method": "estimated"})
            measured = None
            if cuda:
                try:
                    measured = measure_step_memory(cfg, args.size, batch, parts=parts).peak_gib
                    rows.append(base | {"peak_gib": round(measured, 3), "method": "measured-cuda"})
                except torch.cuda.OutOfMemoryError:
                    measured = float("nan")
                    rows.append(base | {"peak_gib": None, "method": "measured-cuda", "error": "out of memory"})
                torch.cuda.empty_cache()
            rt, kinds = est.runtime, est.by_kind
            table.append((batch, variant, rt.weight_dtype, "on" if rt.gradient_checkpointing else "off",
                          "off" if rt.offload_vae else "on", kinds.get("Parameter", 0) / 2**30,
                          (kinds.get("Activation", 0) + kinds.get("Temp", 0)) / 2**30, est.peak_gib, measured))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    device = torch.cuda.get_device_name() if cuda else "no GPU"
    print(f"Peak memory of one training step: {args.preset}, {args.size}x{args.size}, VPT 16, AdamW ({device})")
    print("method: estimated = fake tensors + torch MemTracker on the real step (CUDA autocast emulated; "
          f"checked against CUDA autocast on the forward pass: {compared} calls, {len(diffs)} differences)"
          + ("; measured-cuda = torch.cuda.max_memory_allocated" if cuda else ""))
    for d in diffs[:5]:
        print(f"  autocast difference: {d}")
    head = f"{'batch':>5} {'variant':16} {'weights':9} {'ckpt':4} {'VAE on GPU':10} {'weights GiB':>11} " \
           f"{'activ. GiB':>10} {'estimated GiB':>13}" + (f" {'measured GiB':>12}" if cuda else "")
    print(head)
    for batch, variant, dtype, ckpt, vae, w, act, est_gib, measured in table:
        line = f"{batch:5} {variant:16} {dtype:9} {ckpt:4} {vae:10} {w:11.2f} {act:10.2f} {est_gib:13.2f}"
        print(line + (f" {measured:12.2f}" if cuda else ""))
    default_1 = next((r for r in table if r[0] == 1 and r[1] == "default"), None)
    if default_1 is not None:
        value = default_1[8] if cuda else default_1[7]
        verdict = "met" if value <= TARGET_GIB else "NOT met"
        print(f"target: default at batch 1 <= {TARGET_GIB} GiB: {value:.2f} GiB "
              f"({'measured' if cuda else 'estimated'}): {verdict}")
    print("not counted: the CUDA context (~0.3-0.5 GiB, outside max_memory_allocated too), cuBLAS/cuDNN "
          "workspaces, allocator fragmentation" + ("" if cuda else "; no GPU here, so nothing was measured"))
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
