"""Per-trial overhead of a sweep worker, as a share of a quickstart trial.

    python benchmarks/sweep_overhead.py                 # 3 runs of the shipped vpt2_vs_vpt16 sweep's trial
    python benchmarks/sweep_overhead.py --runs 2 --sweep sweeps/vpt2_vs_vpt16.yaml

A worker loads the frozen model once and then calls `train(cfg, parts=parts)` for every
run of every trial, exactly as here (the runs alternate the sweep's first parameter's
choices, seeds 0, 1, 2, ...). Each run's wall time is split into phases with timers
wrapped around the functions `train` calls (nothing in the package is changed):

  set-up        from `train()` entry to `trainer.fit`: data scan, evaluator (CLIP scorer,
                reference features, pipeline), run folder, W&B run, latents, Lightning Trainer
    of which evaluator      `make_evaluator`
    of which W&B            `Tracker` (the W&B run's start)
  fit set-up    Lightning from `fit()` to the first step's start
  work          steps, evaluations and previews: what the trial is for
  tear-down     after the last step: final saves, summary, W&B finish

Overhead = set-up + fit set-up + tear-down, per run; the model load is paid once per worker
and printed beside it, with its share when spread over the runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytorch_lightning as pl

from tiframework.config import with_overrides
from tiframework.sweeps.runner import TrainRunner
from tiframework.sweeps.schema import CategoricalParam, load_sweep, trial_overrides
from tiframework.training import train as train_module

PHASES = ("set-up", "evaluator", "W&B", "fit set-up", "work", "tear-down")


class Clock:
    """Seconds spent per phase in the current run."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self.marks: dict[str, float] = {}

    def timed(self, phase: str, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[phase] += time.perf_counter() - start
        return wrapper


class Marks(pl.Callback):
    """Timestamps of the fit's phases (fit() entry is marked by the wrapped `Trainer.fit`)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.marks.setdefault("first_step", time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.clock.marks["train_end"] = time.perf_counter()


def run_once(runner: TrainRunner, cfg, parts, clock: Clock) -> dict[str, float]:
    clock.spent.clear()
    clock.marks.clear()
    real_fit = pl.Trainer.fit

    def fit(self, *args, **kwargs):
        clock.marks["fit"] = time.perf_counter()
        return real_fit(self, *args, **kwargs)

    pl.Trainer.fit = fit
    try:
        start = time.perf_counter()
        train_module.train(cfg, parts=parts, extra_callbacks=[Marks(clock)])
        end = time.perf_counter()
    finally:
        pl.Trainer.fit = real_fit
    m = clock.marks
    # The step-0 evaluation runs in on_train_start, before the first step: it is work, not
    # set-up, so it is taken out of the fit set-up.
    step0_eval = clock.spent.get("eval-score-before-first-step", 0.0)
    out = {"total": end - start, "set-up": m["fit"] - start, "evaluator": clock.spent["evaluator"],
           "W&B": clock.spent["W&B"], "fit set-up": m["first_step"] - m["fit"] - step0_eval,
           "tear-down": end - m["train_end"]}
    out["work"] = out["total"] - out["set-up"] - out["fit set-up"] - out["tear-down"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", default=str(Path(__file__).parents[1] / "sweeps" / "vpt2_vs_vpt16.yaml"))
    parser.add_argument("--runs", type=int, default=3, help="training runs in the one worker (default: 3)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the sweep's experiment")
    args = parser.parse_args()

    sweep = load_sweep(args.sweep, args.overrides)
    clock = Clock()
    for name, phase in {"make_evaluator": "evaluator", "Tracker": "W&B"}.items():
        setattr(train_module, name, clock.timed(phase, getattr(train_module, name)))
    score = train_module.cb.EvalCallback.evaluate

    def evaluate(self, module, step):  # the step-0 baseline runs before the first step
        start = time.perf_counter()
        try:
            return score(self, module, step)
        finally:
            if "first_step" not in clock.marks:
                clock.spent["eval-score-before-first-step"] += time.perf_counter() - start

    train_module.cb.EvalCallback.evaluate = evaluate
    runner = TrainRunner()
    start = time.perf_counter()
    parts = runner.load(sweep.base.model)
    load_s = time.perf_counter() - start
    key, param = next(iter(sweep.space.items()))
    choices = param.choices if isinstance(param, CategoricalParam) else [None]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tif-sweep-overhead-") as tmp:
        for i in range(args.runs):
            params = {key: choices[i % len(choices)]} if choices[0] is not None else {}
            over = trial_overrides(sweep, "overhead", i, params, i, tmp) | {"logging.progress_bar": False}
            cfg = with_overrides(sweep.base, over)
            rows.append(run_once(runner, cfg, parts, clock))
            r = rows[-1]
            print(f"run {i}: {r['total']:.1f} s ({key}={params.get(key)})", flush=True)
    print(f"\nsweep {Path(args.sweep).name}: {args.runs} runs of one worker; model loaded once in {load_s:.2f} s")
    print(f"{'run':>3} {'total s':>8} " + " ".join(f"{p:>10}" for p in PHASES) + f" {'overhead':>9}")
    for i, r in enumerate(rows):
        overhead = r["set-up"] + r["fit set-up"] + r["tear-down"]
        print(f"{i:3} {r['total']:8.1f} " + " ".join(f"{r[p]:10.3f}" for p in PHASES)
              + f" {overhead / r['total']:8.1%}")
    later = rows[1:] or rows
    mean_total = sum(r["total"] for r in later) / len(later)
    mean_over = sum(r["set-up"] + r["fit set-up"] + r["tear-down"] for r in later) / len(later)
    print(f"runs after the first: overhead {mean_over:.2f} s of {mean_total:.1f} s = {mean_over / mean_total:.1%} "
          f"per run (target < 5%); the one model load spread over {args.runs} runs adds "
          f"{load_s / args.runs / mean_total:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
