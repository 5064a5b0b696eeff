"""A comparison sweep one run at a time vs as populations, through `tiframework sweep` itself.

    python benchmarks/sweep_population.py                        # vpt2_vs_vpt16: 2 arms x 4 seeds, quickstart, toy world
    python benchmarks/sweep_population.py --steps 4 --seeds 2 --set eval.seeds=[0,1] eval.steps=4   # a quick check
    python benchmarks/sweep_population.py --json                 # {sequential_s, population_s, speedup, ...}

Unlike `benchmarks/population.py` (training steps only, `train` vs `train_population`),
this times the whole sweep as a user runs it: the study, every run's evaluation, its
files and summary, with `--population 1` ("sequential") and `--population K` (default
`auto`, as `tiframework sweep` chooses it), each in its own subprocess (its own peak RSS),
in the same invocation. The first `--n-trials` arm x seed pairs run, seed by seed: the
default 8 are seeds 0-3 of both arms. `max_abs_diff` is the largest difference between
the two sweeps' trial values (held-out best fidelity) and between their runs' final
embedding vectors. Both times include the worker's one model load; the population's also
includes choosing K (`auto`: the memory estimate, a few seconds).
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


def child(spec: dict) -> None:
    """One sweep in this process: print its wall time, peak RSS, trial values and vectors."""
    from tiframework.logs import configure_logging
    from tiframework.sd.embeddings import load_embedding
    from tiframework.sweeps.launch import run_sweep
    from tiframework.training.train import train  # noqa: F401 (torch and training imported before the clock starts)

    configure_logging(False)
    start = time.perf_counter()
    summary = run_sweep(spec["sweep"], spec["overrides"], n_trials=spec["trials"], study_name="bench",
                        population=spec["population"], progress=False)
    seconds = time.perf_counter() - start
    import optuna  # after the sweep: already loaded by it

    study = optuna.load_study(study_name="bench", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(Path(summary["folder"]) / "journal.log"))))
    values, vectors = {}, {}
    for t in study.trials:
        key = f"{t.params['arm']}/seed-{t.params['seed']}"
        values[key] = t.value
        run = (t.user_attrs.get("seeds", {}).get(str(t.params["seed"])) or {}).get("run_dir")
        if run:  # the run's final embedding, as its summary.json names it
            final = json.loads((Path(run) / "summary.json").read_text())["embedding"]
            vectors[key] = load_embedding(final).vectors.flatten().tolist()
    print(json.dumps({"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "states": summary["states"], "values": values, "vectors": vectors}))


def measure(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=REPO, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"population {spec['population']} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    log = [line for line in proc.stderr.splitlines() if "population" in line and "worker" in line]
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"chosen": log[0].split(": population ", 1)[-1] if log else ""}


def max_abs_diff(a: dict, b: dict) -> float:
    diffs = []
    for key in a.keys() & b.keys():
        x, y = a[key], b[key]
        x, y = (x, y) if isinstance(x, list) else ([x], [y])
        diffs += [abs(p - q) for p, q in zip(x, y, strict=True) if p is not None and q is not None]
    return max(diffs, default=float("nan"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "vpt2_vs_vpt16.yaml")
    ap.add_argument("--seeds", type=int, default=4, help="seeds per arm (the sweep's first ones)")
    ap.add_argument("--steps", type=int, help="training.max_steps (default: the experiment's, 120)")
    ap.add_argument("--population", default="auto", help="K for the population sweep (default: auto)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides for every run")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks" / "sweep_population")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    out = args.out.resolve()
    common = [*args.set, *([f"training.max_steps={args.steps}"] if args.steps else [])]
    trials = 2 * args.seeds
    results = {}
    for mode, k in (("sequential", 1), ("population", args.population)):
        spec = {"sweep": str(args.sweep.resolve()), "trials": trials, "population": k,
                "overrides": [*common, f"logging.runs_dir={out / mode}", "logging.wandb=false"]}
        folder = out / mode / "sweeps" / "bench"
        if folder.exists():  # a new study each time: the old one moves aside, as --fresh does
            folder.rename(folder.with_name(f"bench-old-{time.strftime('%Y%m%d-%H%M%S')}"))
        results[mode] = measure(spec)
    seq, pop = results["sequential"], results["population"]
    r = {"sequential_s": seq["seconds"], "population_s": pop["seconds"], "speedup": seq["seconds"] / pop["seconds"],
         "max_abs_diff": max(max_abs_diff(seq["values"], pop["values"]), max_abs_diff(seq["vectors"], pop["vectors"])),
         "max_abs_diff_values": max_abs_diff(seq["values"], pop["values"]),
         "peak_mib": pop["peak_mib"], "sequential_peak_mib": seq["peak_mib"], "trials": trials,
         "states": [seq["states"], pop["states"]], "population": pop["chosen"]}
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{args.sweep.name}: {trials} trials (2 arms x {args.seeds} seeds) through `tiframework sweep`, "
          f"evaluation included; K = {r['population']}")
    print(f"{'mode':12} {'wall s':>9} {'peak MiB':>9}  states")
    print(f"{'sequential':12} {seq['seconds']:9.2f} {seq['peak_mib']:9.0f}  {seq['states']}")
    print(f"{'population':12} {pop['seconds']:9.2f} {pop['peak_mib']:9.0f}  {pop['states']}")
    print(f"{'speed-up':12} {r['speedup']:8.2f}x  (sequential / population)")
    print(f"max |difference| of trial values {r['max_abs_diff_values']:.3g}, of values and final vectors "
          f"{r['max_abs_diff']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
