"""The guide's pruning claim, measured on the toy world: prune the character's traits from
the captions and `[name]` alone draws them more often than after training on unpruned captions.

    python benchmarks/pruning.py                          # kiri, seeds 0 1 2, 120 steps, 32 samples per run
    python benchmarks/pruning.py --character sora --seeds 0 1 2 3 4 --steps 200

For each seed and each arm (pruned / unpruned captions) this trains an embedding with the
quickstart experiment through `tiframework.training.train.train` (the pruned arm trains on the dataset
variant `toyworld:<character>?pruned=1`, written by `tiframework tags prune`'s own code), then
samples `[name]` alone with fixed seeds and asks the toy world's attribute classifier which of
the character's traits each image shows. It prints, per trait, the rate in each arm (mean over
seeds with its 95% t-interval) and pruned − unpruned with its interval, test (paired by seed),
Holm-adjusted p over the traits and verdict, all from the statistics `tiframework compare`
uses (`tiframework.reports.stats` / `pairs`), and writes the table as JSON and Markdown to --out.

The step-0 rate (init text only) is measured once as the floor both arms start from.
The same question through the user-facing command: `sweeps/pruned_vs_unpruned.yaml`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def fmt_interval(iv: dict[str, Any] | None) -> str:
    if iv is None:
        return "-"
    ci = iv["ci"]
    return f"{iv['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def tables(rows: dict[str, list[dict]], groups: list[str]) -> tuple[dict[str, dict], list[dict[str, Any]]]:
    """Per trait group: each arm's mean with its 95% t-interval over seeds, and pruned − unpruned
    tested (paired by seed when the arms' seeds match, else Welch), Holm over the groups."""
    from tiframework.reports.compare.pairs import conclude, pair_row, paired_or_welch
    from tiframework.reports.stats import mean_interval

    arms = {arm: {g: [(r["seed"], r[g]) for r in runs] for g in groups} for arm, runs in rows.items()}
    per_arm = {g: {arm: (iv.as_dict() if (iv := mean_interval([v for _, v in arms[arm][g]])) else None)
                   for arm in arms} for g in groups}
    # "all her traits" is the claim; the single traits are reported with it, and Holm counts every test.
    tests = conclude([pair_row("pruned", "unpruned", g, "final", paired_or_welch(arms["pruned"][g], arms["unpruned"][g]))
                      for g in groups])
    return per_arm, tests


def trait_rates(parts, character: str, name: str, vectors, n_samples: int, steps: int, guidance: float) -> dict:
    """Share of `[name]` images showing each of the character's attributes."""
    from tiframework.sd.generate import generate
    from tiframework.toyworld.classifier import attribute_accuracy

    images = generate(parts, ["[name]"], list(range(1000, 1000 + n_samples)), name=name, vectors=vectors,
                      steps=steps, guidance_scale=guidance)[0]
    return attribute_accuracy(images, character)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", type=Path, default=REPO / "experiments" / "quickstart.yaml")
    ap.add_argument("--character", default="kiri", help="a held-out toy character (kiri or sora)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds per arm")
    ap.add_argument("--steps", type=int, default=120, help="optimizer steps per run")
    ap.add_argument("--samples", type=int, default=32, help="`[name]` images scored per run")
    ap.add_argument("--sample-steps", type=int, default=20, help="DDIM steps per sample")
    ap.add_argument("--guidance", type=float, default=7.0)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks" / "pruning")
    args = ap.parse_args(argv)

    from tiframework.config import load_config
    from tiframework.data.sources import toyworld_dataset
    from tiframework.fileio import atomic_write_text
    from tiframework.sd.embeddings import create, load_embedding
    from tiframework.sd.models import load_model
    from tiframework.toyworld.characters import get_character
    from tiframework.training.train import train

    character = get_character(args.character)
    args.out.mkdir(parents=True, exist_ok=True)
    source = toyworld_dataset(f"toyworld:{character.name}")
    datasets = {"unpruned": source, "pruned": toyworld_dataset(f"toyworld:{character.name}?pruned=1")}

    common = [f"training.max_steps={args.steps}", "preview.every=0", "eval.every=0", "training.save_every=0",
              "logging.wandb=false", "logging.progress_bar=false", f"logging.runs_dir={args.out / 'runs'}",
              f"embedding.name={character.name}_ti"]
    base = load_config(args.experiment, common)
    parts = load_model(base.model)
    name = base.embedding.name
    start = create(base.embedding, parts)  # the init-text vectors: the step-0 floor
    t0 = time.monotonic()
    floor = trait_rates(parts, character.name, name, start.vectors, args.samples, args.sample_steps, args.guidance)
    rows: dict[str, list[dict]] = {arm: [] for arm in datasets}
    for seed in args.seeds:
        for arm, folder in datasets.items():
            cfg = load_config(args.experiment, [*common, f"data.path={folder}",
                                                f"training.seed={seed}", f"logging.experiment=pruning-{arm}"])
            summary = train(cfg, parts=parts)
            vectors = load_embedding(summary["embedding"]).vectors
            rates = trait_rates(parts, character.name, name, vectors, args.samples, args.sample_steps, args.guidance)
            rows[arm].append({"seed": seed, **rates})
            print(f"seed {seed} {arm:8s} traits {rates['traits']:.3f}  ({time.monotonic() - t0:.0f} s)", flush=True)

    groups = [*character.trait_groups(), "traits"]
    per_arm, tests = tables(rows, groups)
    lines = [f"# Pruning on the toy world: `{character.name}`, seeds {args.seeds}, {args.steps} steps, "
             f"{args.samples} `[name]` samples per run", "",
             "Means over seeds with 95% t-intervals; pruned − unpruned with its 95% interval, "
             f"{tests[0]['test']} test, p Holm-adjusted over the {len(groups)} rows.", "",
             "| attribute | step 0 | unpruned | pruned | pruned − unpruned | p (Holm) | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for g, t in zip(groups, tests, strict=True):
        diff = "-" if t["diff"] is None else f"{t['diff']:+.3f}" + (
            f" [{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}]" if t["ci"] else "")
        p_adj = "-" if t["p_adjusted"] is None else f"{t['p_adjusted']:.2g}"
        lines.append(f"| {g} | {floor[g]:.3f} | {fmt_interval(per_arm[g]['unpruned'])} | "
                     f"{fmt_interval(per_arm[g]['pruned'])} | {diff} | {p_adj} | {t['verdict']} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    atomic_write_text(args.out / "pruning.md", text)
    atomic_write_text(args.out / "pruning.json", json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "step0": {g: floor[g] for g in groups},
         "arms": per_arm, "tests": tests, "runs": rows}, indent=1))
    print(f"wrote {args.out / 'pruning.md'} ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
