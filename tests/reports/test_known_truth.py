"""Known-truth checks of `tiframework compare` on real toy-world training (CPU).

The statistics are tested on made-up numbers in test_stats / test_compare; these tests train
real embeddings on the committed toy world and put them through the user-facing command
(`compare` on the run folders training wrote), where the truth is known:

- two arms with the same settings, told apart only by their training seeds: every verdict
  must be "no detectable difference";
- kiri trained on pruned vs unpruned captions: with her traits pruned, `[name]` alone draws
  them more often (attribute accuracy, the toy world's ground truth), the effect
  `benchmarks/pruning.py` measures and `sweeps/pruned_vs_unpruned.yaml` asks about.

One population (`train_population`, each member as if trained alone) trains both arms x
6 seeds once for the module. Training is seeded and deterministic on one CPU thread count,
so each test gives the same numbers every time it runs on the same software; what could make
one fail is listed with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runs import QUICKSTART, ROOT
from tiframework.cli import main

ACC = "eval/attribute_accuracy"
WEIGHTS = ROOT / "tiframework" / "toyworld" / "weights"
needs_toy_weights = pytest.mark.skipif(not (WEIGHTS / "model_index.json").is_file(), reason="toy weights not built")
ARMS = {"pruned": "toyworld:kiri?pruned=1", "unpruned": "toyworld:kiri"}
SEEDS = range(6)
STEPS = 120


def kiri(runs_dir: Path) -> list[str]:
    """The quickstart on the toy world, scored only at step 0 and at its end, on 16 held-out
    images of `[name]` and one flexibility prompt (4 selection seeds); no tagger (attribute
    accuracy is the toy world's ground truth), no saves or previews."""
    return [f"training.max_steps={STEPS}", f"eval.every={STEPS}", f"eval.seeds={list(range(16))}",
            "eval.selection_seeds=[100,101,102,103]", "eval.tagger=null", "eval.trait_leak=[]",
            "eval.flexibility_prompts=[\"[name], grass\"]", "preview.every=0", "training.save_every=0",
            "logging.wandb=false", "logging.progress_bar=false", f"logging.runs_dir={runs_dir}"]


@pytest.fixture(scope="module")
def kiri_runs(tmp_path_factory) -> Path:
    """Both arms x seeds 0-5 in one population; seeds 0-2 of each arm in experiment "a",
    3-5 in "b" (run folders `<experiment>/<arm>-seed-<s>`; logging.* never makes runs differ)."""
    from tiframework.config import load_config
    from tiframework.training.population import train_population

    runs = tmp_path_factory.mktemp("known-truth") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the toy world's dataset cache, shared with the other toy-world tests
        cfgs = [load_config(QUICKSTART, [*kiri(runs), f"data.path={path}", f"training.seed={seed}",
                                         f"logging.experiment={'a' if seed < 3 else 'b'}",
                                         f"logging.run_id={arm}-seed-{seed}"])
                for arm, path in ARMS.items() for seed in SEEDS]
        train_population(cfgs)
    return runs


def compare(targets: list[Path], by: str, out: Path) -> dict:
    assert main(["compare", *map(str, targets), "--by", by, "--out", str(out), "--no-wandb"]) == 0
    return json.loads((out / "comparison.json").read_text())


@pytest.mark.slow
@needs_toy_weights
def test_two_arms_with_the_same_settings_show_no_detectable_difference(kiri_runs, tmp_path):
    """The pruned arm's seeds 0-2 (experiment "a") against its seeds 3-5 ("b"), arms formed by
    `--by logging.experiment`, a key that changes nothing but the folder. Unmatched seeds, so
    compare uses Welch's test.

    Could fail if: compare pooled or paired runs wrongly, ignored the spread between seeds
    (calling seed noise a difference), or Holm were not applied; or, by chance, with the
    probability Holm allows (at most 5% for the whole report; the numbers are fixed by the
    seeds, so a failure would repeat and should be looked at, not re-rolled)."""
    result = compare(sorted(kiri_runs.glob("*/pruned-seed-*")), "logging.experiment", tmp_path / "cmp")
    assert [(a["name"], a["n"]) for a in result["arms"]] == [("experiment=a", 3), ("experiment=b", 3)]
    tested = [p for p in result["pairs"] if p["p"] is not None]
    metrics = {p["metric"] for p in tested}
    assert {"eval/clip_fidelity", "eval/clip_flexibility", ACC, "eval/fried"} <= metrics
    assert all(p["test"] == "Welch t" for p in tested)
    # The seeds do differ (a real spread, not identical runs), and no difference is called.
    assert all(p["sd"] > 0 for p in tested if p["metric"] != "plateau_step")
    assert [p["verdict"] for p in tested if not p["verdict"].startswith("no detectable difference")] == []
    assert all(p["p_adjusted"] >= 0.05 for p in tested)


@pytest.mark.slow
@needs_toy_weights
def test_pruned_captions_make_the_traits_appear_unprompted(kiri_runs, tmp_path):
    """Pruned vs unpruned, 6 matched seeds each, arms formed by `--by data.path`: compare pairs
    the seeds and finds the pruned arm's `[name]` images show her traits more often at the
    end of training, significant after Holm over every test in the report.

    Could fail if: compare formed or paired the arms wrongly, lost the sign of the difference,
    or corrected too little or too much; or if the toy world's pruning effect (pruned 0.45 vs
    unpruned 0.37, benchmarks/RESULTS.md) were smaller at this size than measured."""
    result = compare([kiri_runs], "data.path", tmp_path / "cmp")
    names = {a["name"]: a for a in result["arms"]}
    pruned, unpruned = (f"path={ARMS['pruned']}", f"path={ARMS['unpruned']}")
    assert names[pruned]["n"] == names[unpruned]["n"] == len(SEEDS)
    final = next(p for p in result["pairs"] if p["metric"] == ACC and p["summary"] == "final")
    assert final["test"] == "paired t"
    assert {final["a"], final["b"]} == {pruned, unpruned}
    sign = 1 if final["a"] == pruned else -1
    assert sign * final["diff"] > 0
    assert final["p_adjusted"] < 0.05
    assert final["verdict"] == f"{pruned} better"
    # The other metrics are reported with their own verdicts, none of them about attribute accuracy.
    assert len({(p["metric"], p["summary"]) for p in result["pairs"]}) == len(result["pairs"])
