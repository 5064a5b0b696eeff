"""A population's evaluations one after another vs generated together: wall and CPU time, equal rows.

    python benchmarks/population_eval.py                      # 8 members, the quickstart's eval on the toy world
    python benchmarks/population_eval.py --ks 1 2 --steps 2   # a quick check of the script
    python benchmarks/population_eval.py --ks 1 4 8 --json    # machine-readable

For each K: K members (the quickstart's VPT 4 embedding, each with its own perturbation of
its init vectors) are evaluated at one step with the quickstart's `eval.*` settings.
"alone" calls each member's `Evaluator.score` in turn, as K solo runs do; "together" calls
`evaluation.batched.score_together` once, as a population does when its members are due at
the same step. Evaluators are built (CLIP, reference art) before timing, and one untimed
round warms both up. `max_abs_diff` is the largest difference between any value of the two
modes' eval rows. Speed-up = alone / together.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(k: int, steps: int | None, out: Path) -> dict:
    import torch

    from tiframework.config import load_config
    from tiframework.evaluation.batched import score_together
    from tiframework.evaluation.evaluator import make_evaluator
    from tiframework.sd.embeddings import create
    from tiframework.sd.models import load_model

    extra = [f"eval.steps={steps}"] if steps else []
    cfg = load_config(REPO / "experiments" / "quickstart.yaml",
                      ["logging.wandb=false", f"logging.runs_dir={out}", *extra])
    parts = load_model(cfg.model)
    base = create(cfg.embedding, parts, {}).vectors
    members = []
    for i in range(k):
        noise = torch.randn(base.shape, generator=torch.Generator().manual_seed(i))
        members.append((make_evaluator(cfg, parts), base + 0.02 * noise))

    def alone() -> list[dict]:
        return [evaluator.score(vectors, 100) for evaluator, vectors in members]

    def together() -> list[dict]:
        return score_together([(evaluator, vectors, 100) for evaluator, vectors in members])

    alone(), together()  # warm-up: kernels, allocator, pipelines
    timings, rows = {}, {}
    for name, fn in (("alone", alone), ("together", together)):
        start, cpu = time.perf_counter(), time.process_time()
        rows[name] = fn()
        timings[name] = (time.perf_counter() - start, time.process_time() - cpu)
    diff = max(abs(a[key] - b[key]) for a, b in zip(rows["alone"], rows["together"], strict=True)
               for key in a if a[key] == a[key])
    images = sum(len(r.seeds) for r in members[0][0].requests(members[0][1]))
    return {"k": k, "images_per_member": images, "alone_s": timings["alone"][0],
            "together_s": timings["together"][0], "alone_cpu_s": timings["alone"][1],
            "together_cpu_s": timings["together"][1], "speedup": timings["alone"][0] / timings["together"][0],
            "cpu_ratio": timings["alone"][1] / timings["together"][1], "max_abs_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[8], help="population sizes (default: 8)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the quickstart's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU time is steadier at 1)")
    parser.add_argument("--out", default="/tmp/tif-population-eval", help="scratch folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object per K instead of a table")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = [measure(k, args.steps, Path(args.out)) for k in args.ks]
    if args.json:
        for r in results:
            print(json.dumps(r))
        return
    print("| K | images per member | alone s | together s | speed-up | CPU alone s | CPU together s | CPU ratio "
          "| max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['k']} | {r['images_per_member']} | {r['alone_s']:.1f} | {r['together_s']:.1f} | "
              f"{r['speedup']:.2f}x | {r['alone_cpu_s']:.1f} | {r['together_cpu_s']:.1f} | {r['cpu_ratio']:.2f}x | "
              f"{r['max_abs_diff']:.1e} |")


if __name__ == "__main__":
    main()
