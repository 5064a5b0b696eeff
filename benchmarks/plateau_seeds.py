"""Do the run-level metrics hold up across training seeds? The quickstart, N seeds, on the toy world.

Each seed trains `experiments/quickstart.yaml` as shipped (only `training.seed` changes, plus
`eval.tagger=toyworld` when the experiment has no tagger), and its eval.csv / summary.json are
read back. The script prints:

1. per seed: the plateau reason and step, the best step chosen on the selection seeds, its
   held-out score and its (biased) selection-set score, the final score;
2. stability: how many seeds give each reason, the arm's plateau on the seed-mean curve
   with its bootstrap interval (`evaluation.plateau.arm_plateau`), and how many seeds'
   plateau steps lie within one eval interval of it;
3. the selection bias: held-out best score vs the selection-set score at the same
   checkpoint, and vs the old way (the maximum of the held-out curve, chosen and reported on
   the same images), means over seeds with 95% t-intervals of the differences; and the
   selection seeds' offset at step 0, where no choice is involved;
4. trait recall (toy tagger, through the WD1.4 code path) against the toy world's
   attribute accuracy over every evaluation of every seed: Pearson and Spearman.

    .venv/bin/python benchmarks/plateau_seeds.py --seeds 0 1 2 3 4 5 6 7 8 9   # ~6 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIDELITY, SELECT = "eval/clip_fidelity", "select/clip_fidelity"
RECALL, ACCURACY = "eval/trait_recall", "eval/attribute_accuracy"


def read_rows(run: Path) -> list[dict[str, float]]:
    with open(run / "eval.csv", newline="") as fh:
        return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval, from the shared comparison statistics."""
    from tiframework.reports.stats import mean_interval

    iv = mean_interval(values)
    return iv.mean, (iv.high - iv.mean) if iv.high is not None else math.nan


def fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", type=Path, default=REPO / "experiments" / "quickstart.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="training seeds")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks" / "plateau_seeds")
    ap.add_argument("--reuse", action="store_true", help="read runs already in --out instead of training again")
    ap.add_argument("--population", action="store_true",
                    help="train the seeds as one population (`train_population`: each seed's run as if alone, "
                    "equal up to float32 rounding; faster, evaluations batched)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a dotted config override for every run (repeatable), e.g. --set eval.every=20")
    args = ap.parse_args(argv)

    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    from tiframework.config import load_config
    from tiframework.evaluation.noise import se_key
    from tiframework.evaluation.plateau import Curve, arm_plateau
    from tiframework.evaluation.summary import samples_by_step
    from tiframework.sd.models import load_model
    from tiframework.tracking.runfolder import RunFolder
    from tiframework.training.population.train import train_population
    from tiframework.training.train import train

    base = load_config(args.experiment, args.overrides)
    extra = [] if base.eval.tagger else ["eval.tagger=toyworld"]
    common = ["preview.every=0", "training.save_every=0", "logging.wandb=false", "logging.progress_bar=false",
              f"logging.runs_dir={args.out}", *extra, *args.overrides]
    parts = None if args.reuse else load_model(base.model)
    results = []
    t0 = time.monotonic()
    cfgs = {seed: load_config(args.experiment, [*common, f"training.seed={seed}", f"logging.run_id=seed-{seed}"])
            for seed in args.seeds}
    runs = {seed: args.out / (cfg.logging.experiment or "") / f"seed-{seed}" for seed, cfg in cfgs.items()}
    todo = [seed for seed in args.seeds if not (args.reuse and (runs[seed] / "summary.json").is_file())]
    if args.population and todo:
        parts = parts or load_model(base.model)
        train_population([cfgs[seed] for seed in todo], parts=parts)
    for seed, cfg in cfgs.items():
        run = runs[seed]
        if seed not in todo or args.population:
            summary = json.loads((run / "summary.json").read_text())
        else:
            parts = parts or load_model(base.model)
            summary = train(cfg, parts=parts)
            run = Path(summary["run_dir"])
        results.append((seed, summary, read_rows(run), samples_by_step(RunFolder(run).read_per_image())))
        print(f"seed {seed}: {summary['plateau_reason']} at {summary['plateau_step']} "
              f"({time.monotonic() - t0:.0f} s)", flush=True)
    e = cfg.eval
    print(f"\n{args.experiment.name} ({' '.join(args.overrides) or 'as shipped'}), seeds "
          f"{' '.join(map(str, args.seeds))}: {cfg.training.max_steps} steps, eval every {e.every} on "
          f"{len(e.seeds)} held-out + {len(e.selection())} selection seeds; plateau z {e.plateau_z}, patience "
          f"{e.plateau_patience}, smoothing {e.plateau_smoothing}; {time.monotonic() - t0:.0f} s in all\n")

    print("| seed | plateau reason | plateau step | noise (paired SE) | best step | best, held-out | "
          "best, selection set | final, held-out |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for seed, s, _, _ in results:
        print(f"| {seed} | {s['plateau_reason']} | {fmt(s['plateau_step'])} | {fmt(s['plateau_noise'])} | "
              f"{s['best_step']} | {fmt(s['best_score'])} | {fmt(s['best_score_selection'])} | "
              f"{fmt(s['final_score'])} |")

    reasons = Counter(s["plateau_reason"] for _, s, _, _ in results)
    curves = [Curve([r["step"] for r in rows], [r[FIDELITY] for r in rows],
                    [r.get(se_key(FIDELITY), math.nan) for r in rows],
                    [samples[int(r["step"])] for r in rows] if all(int(r["step"]) in samples for r in rows)
                    else None)
              for _, _, rows, samples in results]
    arm = arm_plateau(curves, z=e.plateau_z, patience=e.plateau_patience, smoothing=e.plateau_smoothing)
    steps = [s["plateau_step"] for _, s, _, _ in results if s["plateau_step"] is not None]
    print(f"\nreasons over {len(results)} seeds: " + ", ".join(f"{r} {n}" for r, n in reasons.most_common()))
    interval = "-" if arm.low is None else f"[{arm.low:g}, {arm.high:g}]"
    shares = ", ".join(f"{r} {v:.0%}" for r, v in arm.resample_reasons.items())
    print(f"seed-mean curve: {arm.reason}, plateau step {fmt(arm.step)}, 95% bootstrap interval {interval} "
          f"(resamples: {shares}); mean fidelity by step: "
          + ", ".join(f"{t}: {m:.3f}" for t, m in zip(arm.steps, arm.mean, strict=True)))
    if arm.step is not None:
        near = sum(abs(p - arm.step) <= e.every for p in steps)
        print(f"plateau steps within one eval interval ({e.every}) of the seed-mean plateau: {near} of "
              f"{len(results)} seeds")

    held = [s["best_score"] for _, s, _, _ in results]
    sel = [s["best_score_selection"] for _, s, _, _ in results]
    old = [max(r[FIDELITY] for r in rows) for _, _, rows, _ in results]
    offset = [rows[0][SELECT] - rows[0][FIDELITY] for _, _, rows, _ in results]
    if len(results) > 1:
        print(f"\nbest checkpoint, mean over seeds (± 95% t half-width of the paired difference): held-out "
              f"{statistics.fmean(held):.4f}; selection set at the same checkpoint {statistics.fmean(sel):.4f} "
              "(held-out - selection = {:+.4f} ± {:.4f}); the old way, max of the held-out curve {:.4f} (new - old = "
              "{:+.4f} ± {:.4f})".format(*t_interval([h - v for h, v in zip(held, sel, strict=True)]),
                                          statistics.fmean(old),
                                          *t_interval([h - o for h, o in zip(held, old, strict=True)])))
        trained = [r[SELECT] - r[FIDELITY] for _, _, rows, _ in results for r in rows if r["step"] > 0]
        print(f"selection seeds - held-out seeds, where no choice is involved: {statistics.fmean(offset):+.4f} at "
              f"step 0 (the init text), {statistics.fmean(trained):+.4f} over every trained checkpoint (a level "
              "difference between the two seed sets; the rest of the gap above is the choice)")

    pairs = [(r[RECALL], r[ACCURACY]) for _, _, rows, _ in results for r in rows if RECALL in r and ACCURACY in r]
    if len(pairs) > 2:
        x, y = np.array(pairs).T
        print(f"trait recall vs attribute accuracy over {len(pairs)} evaluations (every step of every seed): "
              f"Pearson r {pearsonr(x, y)[0]:.3f}, Spearman rho {spearmanr(x, y)[0]:.3f}")
        later = [(r[RECALL], r[ACCURACY]) for _, _, rows, _ in results for r in rows[1:] if RECALL in r]
        if len(later) > 2:
            x, y = np.array(later).T
            print(f"  without the step-0 rows (trained checkpoints only, n={len(later)}): "
                  f"Pearson r {pearsonr(x, y)[0]:.3f}, Spearman rho {spearmanr(x, y)[0]:.3f}")
    (args.out / "results.json").write_text(json.dumps([s for _, s, _, _ in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
