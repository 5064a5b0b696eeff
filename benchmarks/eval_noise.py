"""How precise is an evaluation? Eval seeds vs the spread of the score, on the toy world.

One quickstart run is trained (seed 0, `--steps` steps, checkpoints saved at `--early` and at
the end); then its `[name]` images are generated for a pool of seeds that no run ever
evaluates on, with the quickstart's eval settings. The pool is cut into disjoint seed sets
of each size; every set scores the checkpoint as one evaluation with that many seeds would.

For each set size the table compares the *spread* of the score over the disjoint sets
(the standard deviation of their means: what other seeds would have given) with the
*standard error* each set reports about itself (the mean of their SEs): a ratio near 1
means eval.csv's `_se` columns tell the truth. The last rows do the same for the
difference between the two checkpoints, which the plateau rule tests: the paired SE
(image by image, as the rule computes it) against the SE that treats the two
evaluations as independent.

    .venv/bin/python benchmarks/eval_noise.py            # ~3 min on 2 idle CPU cores
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def per_image_scores(parts, evaluator, character: str, name: str, vectors, seeds: list[int]) -> dict:
    """Each image's fidelity and share of the character's traits, in seed order."""
    from tiframework.evaluation.metrics import fidelity_scores
    from tiframework.sd.generate import generate
    from tiframework.toyworld.classifier import attribute_scores

    e = evaluator.eval_cfg
    images = []
    for start in range(0, len(seeds), 24):  # in chunks: the same images, less memory
        images += generate(parts, ["[name]"], seeds[start : start + 24], name=name, vectors=vectors,
                           clip_skip=evaluator.cfg.model.clip_skip, steps=e.steps, guidance_scale=e.guidance_scale,
                           negative_prompt=e.negative_prompt, width=e.width, height=e.height, pipe=evaluator.pipe)[0]
    fidelity = fidelity_scores(evaluator.scorer, evaluator.reference_features, {"[name]": images}).per_image
    return {"fidelity": np.array(fidelity), "attribute accuracy": np.array(attribute_scores(images, character)[1])}


def sets_of(values: np.ndarray, size: int) -> np.ndarray:
    n = len(values) // size
    return values[: n * size].reshape(n, size)


def ratio_text(spread: float, se: float, sets: int) -> str:
    """spread / SE with a 95% interval: the spread of `sets` means is itself an estimate
    (chi-square interval of a standard deviation from `sets` values)."""
    from scipy.stats import chi2

    df = sets - 1
    low, high = spread * math.sqrt(df / chi2.ppf(0.975, df)), spread * math.sqrt(df / chi2.ppf(0.025, df))
    return f"{spread / se:.2f} [{low / se:.2f}, {high / se:.2f}]"


def se_rows(name: str, values: np.ndarray, sizes: list[int]) -> list[str]:
    rows = []
    for k in sizes:
        sets = sets_of(values, k)
        means, ses = sets.mean(axis=1), sets.std(axis=1, ddof=1) / math.sqrt(k)
        spread = float(means.std(ddof=1))
        rows.append(f"| {name} | {k} | {len(sets)} | {spread:.4f} | {ses.mean():.4f} | "
                    f"{ratio_text(spread, float(ses.mean()), len(sets))} |")
    return rows


def diff_rows(early: np.ndarray, late: np.ndarray, sizes: list[int]) -> list[str]:
    rows = []
    for k in sizes:
        a, b = sets_of(early, k), sets_of(late, k)
        diffs = (b - a).mean(axis=1)
        paired = (b - a).std(axis=1, ddof=1) / math.sqrt(k)
        independent = np.sqrt(a.var(axis=1, ddof=1) / k + b.var(axis=1, ddof=1) / k)
        spread = float(diffs.std(ddof=1))
        rows.append(f"| {k} | {len(a)} | {diffs.mean():+.4f} | {spread:.4f} | {paired.mean():.4f} "
                    f"| {independent.mean():.4f} | {ratio_text(spread, float(paired.mean()), len(a))} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", type=Path, default=REPO / "experiments" / "quickstart.yaml")
    ap.add_argument("--steps", type=int, default=120, help="optimizer steps of the scored run")
    ap.add_argument("--early", type=int, default=80, help="the earlier checkpoint of the difference rows")
    ap.add_argument("--pool", type=int, default=192, help="seeds in the pool (a multiple of 24 uses them all)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 12, 24])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks" / "eval_noise")
    args = ap.parse_args(argv)

    from tiframework.config import load_config
    from tiframework.evaluation.evaluator import make_evaluator
    from tiframework.sd.embeddings import load_embedding
    from tiframework.sd.models import load_model
    from tiframework.toyworld.characters import is_spec, parse_spec
    from tiframework.training.train import train

    t0 = time.monotonic()
    cfg = load_config(args.experiment, [f"training.max_steps={args.steps}", f"training.save_every={args.early}",
                                        "eval.every=0", "preview.every=0", "logging.wandb=false",
                                        "logging.progress_bar=false", f"logging.runs_dir={args.out}"])
    parts = load_model(cfg.model)
    summary = train(cfg, parts=parts)
    run = Path(summary["run_dir"]) / "embeddings"
    name = cfg.embedding.name
    evaluator = make_evaluator(cfg, parts)
    character = parse_spec(next(s for s in (cfg.eval.reference, cfg.data.path) if s and is_spec(s))).name
    # Seeds far from any eval or selection seed (those are small numbers).
    pool = list(range(100_000, 100_000 + args.pool))
    late = per_image_scores(parts, evaluator, character, name, load_embedding(run / f"{name}.pt").vectors, pool)
    early = per_image_scores(parts, evaluator, character, name,
                             load_embedding(run / f"{name}-{args.early}.pt").vectors, pool)
    e = cfg.eval
    print(f"\n{args.experiment.name}, seed 0, {args.steps} steps; `[name]` images, {e.steps} {e.sampler} steps, "
          f"guidance {e.guidance_scale}; a pool of {args.pool} seeds ({time.monotonic() - t0:.0f} s)\n")
    print(f"Step {args.steps}: the score's spread over disjoint seed sets vs the SE each set reports\n")
    print("| score | seeds per set | sets | spread (std of set means) | mean reported SE | spread / SE [95% CI] |")
    print("| --- | --- | --- | --- | --- | --- |")
    for metric in ("fidelity", "attribute accuracy"):
        for row in se_rows(metric, late[metric], args.sizes):
            print(row)
    print(f"\nFidelity gain from step {args.early} to {args.steps}, per seed set: its spread vs the paired SE "
          "(what the plateau rule uses) and the SE that treats the two evaluations as independent\n")
    print("| seeds per set | sets | mean gain | spread of the gain | mean paired SE | mean independent SE "
          "| spread / paired SE [95% CI] |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in diff_rows(early["fidelity"], late["fidelity"], args.sizes):
        print(row)
    print(f"\nwhole pool: fidelity {statistics.fmean(late['fidelity']):.4f} at step {args.steps}, "
          f"{statistics.fmean(early['fidelity']):.4f} at step {args.early}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
