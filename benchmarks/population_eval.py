"""A population's evaluations one after another vs generated together: wall and CPU time, equal rows.

    python benchmarks/population_eval.py                      # 8 members, the quickstart's eval on the toy world
    python benchmarks/population_eval.py --ks 1 2 --steps 2   # a quick check of the script
    python benchmarks/population_eval.py --ks 1 4 8 --json    # machine-readable
    python benchmarks/population_eval.py --ks 16 --steps 5 --set "eval.seeds=[$(seq -s, 0 31)]" \
        --set "eval.flexibility_prompts=[]" --set eval.tagger=null --set "eval.trait_leak=[]"  # 32 images a prompt, as the pruning test

For each K: K members (the quickstart's VPT 4 embedding, each with its own perturbation of
its init vectors) are evaluated at one step with the quickstart's `eval.*` settings.
"alone" calls each member's `Evaluator.score` in turn, as K solo runs do; "together" calls
`evaluation.batched.score_together` once, as a population does when its members are due at
the same step (on a CPU in sampler calls of at most `sd.generate.CPU_ROWS_PER_CALL` images);
"one call" does the same with that limit lifted, every image of a prompt length in one
sampler call. Evaluators are built (CLIP, reference art) before timing, and one untimed
round warms every mode up. `max_abs_diff` is the largest difference between any value of
"alone"'s and "together"'s eval rows, `one_call_diff` between "one call"'s and "together"'s.
Speed-up = alone / together; one call / together = the time the limit saves.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(k: int, steps: int | None, out: Path, settings: list[str]) -> dict:
    import torch

    from tiframework.config import load_config
    from tiframework.evaluation.batched import score_together
    from tiframework.evaluation.evaluator import make_evaluator
    from tiframework.sd import generate
    from tiframework.sd.embeddings import create
    from tiframework.sd.models import load_model

    extra = [f"eval.steps={steps}"] if steps else []
    cfg = load_config(REPO / "experiments" / "quickstart.yaml",
                      ["logging.wandb=false", f"logging.runs_dir={out}", *extra, *settings])
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

    def one_call() -> list[dict]:
        limit = generate.CPU_ROWS_PER_CALL
        generate.CPU_ROWS_PER_CALL = 1 << 30
        try:
            return together()
        finally:
            generate.CPU_ROWS_PER_CALL = limit

    modes = {"alone": alone, "one_call": one_call, "together": together}
    for fn in modes.values():
        fn()  # warm-up: kernels, allocator, pipelines
    timings, rows = {}, {}
    for name, fn in modes.items():
        start, cpu = time.perf_counter(), time.process_time()
        rows[name] = fn()
        timings[name] = (time.perf_counter() - start, time.process_time() - cpu)

    def diff(a: str, b: str) -> float:
        return max(abs(x[key] - y[key]) for x, y in zip(rows[a], rows[b], strict=True) for key in x if x[key] == x[key])

    images = sum(len(r.seeds) for r in members[0][0].requests(members[0][1]))
    return {"k": k, "images_per_member": images, "alone_s": timings["alone"][0],
            "one_call_s": timings["one_call"][0], "together_s": timings["together"][0],
            "alone_cpu_s": timings["alone"][1], "together_cpu_s": timings["together"][1],
            "speedup": timings["alone"][0] / timings["together"][0],
            "cpu_ratio": timings["alone"][1] / timings["together"][1],
            "limit_saves": timings["one_call"][0] / timings["together"][0],
            "max_abs_diff": diff("alone", "together"), "one_call_diff": diff("one_call", "together")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[8], help="population sizes (default: 8)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the quickstart's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU time is steadier at 1)")
    parser.add_argument("--out", default="/tmp/tif-population-eval", help="scratch folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the quickstart (repeatable), e.g. eval.seeds=[0,1,2]")
    parser.add_argument("--json", action="store_true", help="print one JSON object per K instead of a table")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = [measure(k, args.steps, Path(args.out), args.set) for k in args.ks]
    if args.json:
        for r in results:
            print(json.dumps(r))
        return
    print("| K | images per member | alone s | one call s | together s | speed-up | one call / together "
          "| CPU alone s | CPU together s | CPU ratio | max abs diff | one call diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['k']} | {r['images_per_member']} | {r['alone_s']:.1f} | {r['one_call_s']:.1f} | "
              f"{r['together_s']:.1f} | {r['speedup']:.2f}x | {r['limit_saves']:.2f}x | {r['alone_cpu_s']:.1f} | "
              f"{r['together_cpu_s']:.1f} | {r['cpu_ratio']:.2f}x | {r['max_abs_diff']:.1e} | {r['one_call_diff']:.1e} |")


if __name__ == "__main__":
    main()
