"""Population training vs the same runs one after another: wall time, equal results, peak memory.

    python benchmarks/population.py                        # 2 arms (VPT 2 | 16) x 4 seeds of the quickstart, toy world, CPU
    python benchmarks/population.py --steps 10 --seeds 0 1 # a quick check of the script
    python benchmarks/population.py --batch-size 1 --json  # the guide's batch size; machine-readable
    python benchmarks/population.py --scaling --preset sd15-random --size 512 --ks 1 4 8 16   # on a GPU

Ablation (default): each arm x seed is `experiments/quickstart.yaml` with the arm's overrides
and `training.seed`. "sequential" trains them one after another with `train(cfg)`, as a
sweep does today; "population" trains them all at once with `train_population(cfgs)`.
Both time training only: previews, evaluation, W&B and periodic saves are off in both,
so the figures are the shared training passes' alone.
Each mode runs in its own subprocess, so its peak memory is its own; it loads the model
and warms up with a 1-step run of every config in the same mode (neither is timed).
`max_abs_diff` is the largest |population - sequential| over all members' final vectors.

The ablation also times the shared pass alone (`ceiling`, in a third subprocess): one
micro-batch's text encoder + UNet forward and backward (`training.population.shared_pass.member_losses`, no
optimizer, data loading, Lightning or callbacks) for each member alone and for all members
at once, `--ceiling-ticks` times each. Their ratio is the most that batching members can
buy on this machine; the population's speed-up is measured against it.

Scaling (`--scaling`): one arm, K members (seeds 0..K-1) on generated `--size` images, for
each K in `--ks`: speed-up = K x (time of one `train` run) / (time of the K population),
and each one's peak memory (CUDA allocator peak on a GPU, peak RSS on a CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = ["embedding.vectors_per_token=2", "embedding.vectors_per_token=16"]  # sweeps/vpt2_vs_vpt16.yaml's arms
QUIET = ["preview.every=0", "eval.every=0", "training.save_every=0", "logging.wandb=false",
         "logging.progress_bar=false"]


def run_configs(spec: dict, steps: int, out: Path, tag: str):
    from tiframework.config import load_config

    return [load_config(spec["experiment"], [*QUIET, *spec["common"], *overrides, f"training.max_steps={steps}",
                                             f"logging.runs_dir={out}", f"logging.experiment={tag}",
                                             f"logging.run_id=run-{i}"])
            for i, overrides in enumerate(spec["runs"])]


def child(spec_file: Path) -> None:
    """One mode in this process: load, warm up, time; print JSON."""
    import torch

    from tiframework.sd.embeddings import load_embedding
    from tiframework.sd.models import load_model
    from tiframework.training.population.train import train_population
    from tiframework.training.train import train

    spec = json.loads(spec_file.read_text())
    out, mode = Path(spec["out"]), spec["mode"]
    if mode == "ceiling":
        return ceiling_child(spec)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cfgs = run_configs(spec, spec["steps"], out / mode, "timed")
    parts = load_model(cfgs[0].model)
    cuda = cfgs[0].training.device != "cpu" and torch.cuda.is_available()

    def go(configs):
        if mode == "population":
            return train_population(configs, parts=parts, max_samples=spec.get("max_samples"))
        return [train(c, parts=parts) for c in configs]

    go(run_configs(spec, 1, out / mode, "warmup"))  # data, latents, kernels: not timed
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, cpu = time.perf_counter(), time.process_time()
    summaries = go(cfgs)
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    vectors = [load_embedding(s["embedding"]).vectors.tolist() for s in summaries]
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_mib": peak, "vectors": vectors,
                      "device": "cuda" if cuda else "cpu"}))


def ceiling_child(spec: dict) -> None:
    """Time the shared pass alone: each member's micro-batch by itself, then all of them at once."""
    import torch

    from tiframework.data.dataset import scan_folder
    from tiframework.data.latents import encode_latents
    from tiframework.data.sources import resolve_data_path
    from tiframework.sd.models import load_model
    from tiframework.training.population.shared_pass import MemberBatch, member_losses
    from tiframework.training.schedules import training_steps
    from tiframework.training.train import run_runtime, stream_loader

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cfgs = run_configs(spec, spec["steps"], Path(spec["out"]) / "ceiling", "ceiling")
    parts = load_model(cfgs[0].model)
    runtime = run_runtime(cfgs[0], parts)
    parts.prepare(runtime)
    device = runtime.device
    scheduler = parts.noise_scheduler()
    batches = []
    for cfg in cfgs:
        items, _ = scan_folder(resolve_data_path(cfg.data.path, "data.path"), cfg.data.max_side,
                               cfg.data.bucket_step or parts.bucket_step)
        latents = encode_latents(items, parts.vae, cfg.data.cache_dir, progress=False)
        first = next(iter(stream_loader(cfg, latents, 0, training_steps(cfg.training))))
        width = parts.text_encoder.get_input_embeddings().weight.shape[1]
        vectors = torch.nn.Parameter(torch.randn(cfg.embedding.vectors_per_token, width, device=device) * 0.01)
        batches.append(MemberBatch.from_collated(first, cfg.embedding.name, vectors, cfg.model.clip_skip))

    def tick_s(group: list[MemberBatch]) -> float:
        def once() -> None:
            sum(member_losses(parts, scheduler, group, device)).backward()
            if device == "cuda":
                torch.cuda.synchronize()

        once()  # warm-up
        start = time.perf_counter()
        for _ in range(spec["ceiling_ticks"]):
            once()
        return (time.perf_counter() - start) / spec["ceiling_ticks"]

    alone = sum(tick_s([b]) for b in batches)
    together = tick_s(batches)
    print(json.dumps({"alone_s": alone, "together_s": together, "samples": sum(b.size for b in batches)}))


def measure(spec: dict, mode: str, out: Path) -> dict:
    spec = {**spec, "mode": mode, "out": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / f"{mode}-{len(spec['runs'])}.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, __file__, "--child", str(spec_file)], cwd=REPO, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_abs_diff(a: list, b: list) -> float:
    import torch

    return max(float((torch.tensor(x) - torch.tensor(y)).abs().max()) for x, y in zip(a, b, strict=True))


def ablation(args, common: list[str]) -> dict:
    runs = [[arm, f"training.seed={seed}"] for arm in args.arms for seed in args.seeds]
    spec = {"experiment": str(args.experiment), "common": common, "runs": runs, "steps": args.steps,
            "max_samples": args.max_samples, "threads": args.threads}
    seq = measure(spec, "sequential", args.out)
    pop = measure(spec, "population", args.out)
    ceiling = measure({**spec, "ceiling_ticks": args.ceiling_ticks}, "ceiling", args.out)
    for name, r in (("sequential", seq), ("population", pop), ("ceiling", ceiling)):
        if "error" in r:
            raise SystemExit(f"{name} failed: {r['error']}")
    return {"sequential_s": seq["seconds"], "population_s": pop["seconds"],
            "speedup": seq["seconds"] / pop["seconds"], "max_abs_diff": max_abs_diff(seq["vectors"], pop["vectors"]),
            "peak_mib": pop["peak_mib"], "sequential_peak_mib": seq["peak_mib"],
            "sequential_cpu_s": seq["cpu_s"], "population_cpu_s": pop["cpu_s"], "members": len(runs),
            "steps": args.steps, "device": pop["device"], "timed": "training steps only (no previews, no evaluation)",
            "shared_pass_alone_ms": 1000 * ceiling["alone_s"], "shared_pass_together_ms": 1000 * ceiling["together_s"],
            "ceiling": ceiling["alone_s"] / ceiling["together_s"]}


def make_images(folder: Path, side: int, n: int = 8) -> Path:
    """`n` random RGB images of side x side with a caption each (speed does not depend on content)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text("1girl, solo, red hair, smile, simple background", encoding="utf-8")
    return folder


def scaling(args, common: list[str]) -> dict:
    data = make_images(args.out / f"images-{args.size}", args.size)
    common = [*common, f"model.preset={args.preset}", f"data.path={data}", f"data.max_side={args.size}"]
    base = {"experiment": str(args.experiment), "common": common, "steps": args.steps,
            "max_samples": args.max_samples, "threads": args.threads}
    alone = measure({**base, "runs": [[args.arms[0], "training.seed=0"]]}, "sequential", args.out / "alone")
    if "error" in alone:
        raise SystemExit(f"a single train run failed: {alone['error']}")
    rows = []
    for k in args.ks:
        r = measure({**base, "runs": [[args.arms[0], f"training.seed={s}"] for s in range(k)]}, "population",
                    args.out / f"k{k}")
        rows.append({"k": k, **({"error": r["error"]} if "error" in r else
                                {"population_s": r["seconds"], "speedup": k * alone["seconds"] / r["seconds"],
                                 "cpu_speedup": k * alone["cpu_s"] / r["cpu_s"], "peak_mib": r["peak_mib"]})})
    return {"device": alone["device"], "preset": args.preset, "size": args.size, "steps": args.steps,
            "alone_s": alone["seconds"], "alone_peak_mib": alone["peak_mib"], "rows": rows,
            "timed": "training steps only (no previews, no evaluation)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", type=Path, default=REPO / "experiments" / "quickstart.yaml")
    ap.add_argument("--arms", nargs="+", default=ARMS, help="one override per arm (default: VPT 2 and VPT 16)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="training seeds per arm")
    ap.add_argument("--steps", type=int, default=120, help="optimizer steps per run (default 120: the comparison sweeps' budget)")
    ap.add_argument("--batch-size", type=int, help="override training.batch_size (default: the experiment's; "
                    "1 with --scaling)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides for every run")
    ap.add_argument("--max-samples", type=int, help="most samples per shared forward/backward pass")
    ap.add_argument("--ceiling-ticks", type=int, default=10,
                    help="micro-batches timed for the shared pass alone (each member alone, all together)")
    ap.add_argument("--threads", type=int, help="torch CPU threads in both modes (default: torch's)")
    ap.add_argument("--scaling", action="store_true", help="speed-up and memory at each K in --ks instead")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--preset", default="sd15-random", help="model preset for --scaling")
    ap.add_argument("--size", type=int, default=512, help="image side for --scaling")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks" / "population")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    batch = args.batch_size or (1 if args.scaling else None)
    common = [*args.set, *([f"training.batch_size={batch}"] if batch else [])]
    args.out = args.out.resolve()
    result = scaling(args, common) if args.scaling else ablation(args, common)
    if args.json:
        print(json.dumps(result))
    elif args.scaling:
        print_scaling(result)
    else:
        print_ablation(result, args)
    return 0


def print_ablation(r: dict, args) -> None:
    print(f"{len(args.arms)} arms x {len(args.seeds)} seeds of {args.experiment.name} ({r['members']} runs, "
          f"{r['steps']} steps each) on {r['device']}; timed: {r['timed']}")
    print(f"{'mode':12} {'wall s':>9} {'CPU s':>9} {'peak MiB':>9}")
    print(f"{'sequential':12} {r['sequential_s']:9.2f} {r['sequential_cpu_s']:9.2f} {r['sequential_peak_mib']:9.0f}")
    print(f"{'population':12} {r['population_s']:9.2f} {r['population_cpu_s']:9.2f} {r['peak_mib']:9.0f}")
    print(f"{'speed-up':12} {r['speedup']:8.2f}x {r['sequential_cpu_s'] / r['population_cpu_s']:8.2f}x   "
          "(sequential / population)")
    print(f"max |vectors(population) - vectors(sequential)| over all members: {r['max_abs_diff']:.3g}")
    print(f"shared pass alone (text encoder + UNet forward and backward of one micro-batch per member): "
          f"{r['shared_pass_alone_ms']:.0f} ms one member at a time, {r['shared_pass_together_ms']:.0f} ms all at once "
          f"= {r['ceiling']:.2f}x, the most batching can buy here; the population got "
          f"{r['speedup'] / r['ceiling']:.0%} of it")


def print_scaling(r: dict) -> None:
    print(f"{r['preset']} at {r['size']}x{r['size']} on {r['device']}, {r['steps']} steps per member; "
          f"timed: {r['timed']}")
    print(f"one train run: {r['alone_s']:.2f} s, peak {r['alone_peak_mib']:.0f} MiB")
    print(f"{'K':>4} {'population s':>13} {'speed-up':>9} {'CPU-time':>9} {'peak MiB':>9}")
    for row in r["rows"]:
        if "error" in row:
            print(f"{row['k']:4} failed: {row['error']}")
        else:
            print(f"{row['k']:4} {row['population_s']:13.2f} {row['speedup']:8.2f}x {row['cpu_speedup']:8.2f}x "
                  f"{row['peak_mib']:9.0f}")
    print("speed-up = K x (one train run) / (population of K): member-steps per second relative to training alone "
          "(wall time; CPU-time: the same ratio of this process's CPU time)")


if __name__ == "__main__":
    raise SystemExit(main())
