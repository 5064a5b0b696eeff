"""Helpers of the known-truth checks (tests/reports/test_known_truth*.py): the quickstart's
toy-world runs trained as one population, and `compare` over their run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runs import QUICKSTART, ROOT
from tiframework.cli import main

ACC = "eval/attribute_accuracy"
FAST, SLOW = "0.02", "0.001"  # the quickstart's learning rate, and one 20 times smaller


def kiri(runs_dir: Path, steps: int = 40, images: int = 8) -> list[str]:
    """The quickstart's first `steps` steps on the toy world, scored at step 0 and at the end on
    `images` held-out `[name]` images (4 selection seeds; 5 sampling steps each, half the
    quickstart's), each training seed on its own images as the shipped comparison sweeps do;
    no flexibility prompts and no tagger (attribute accuracy is the toy world's ground truth;
    fewer metrics, fewer tests for Holm), no saves or previews."""
    return [f"training.max_steps={steps}", f"eval.every={steps}", f"eval.seeds={list(range(images))}", "eval.steps=5",
            "eval.selection_seeds=[100,101,102,103]", "eval.seeds_follow_training_seed=true", "eval.tagger=null",
            "eval.trait_leak=[]", "eval.flexibility_prompts=[]", "preview.every=0", "training.save_every=0",
            "logging.wandb=false", "logging.progress_bar=false", f"logging.runs_dir={runs_dir}"]


def train(members: list[list[str]], runs: Path) -> None:
    """Train every member's overrides of the quickstart as one population."""
    from tiframework.config import load_config
    from tiframework.training.population.train import train_population

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the toy world's dataset cache, shared with the other toy-world tests
        train_population([load_config(QUICKSTART, overrides) for overrides in members])


def compare(targets: list[Path], by: str, out: Path) -> dict:
    assert main(["compare", *map(str, targets), "--by", by, "--out", str(out), "--no-wandb"]) == 0
    return json.loads((out / "comparison.json").read_text())


def assert_better_at_the_end(result: dict, better: str, worse: str, seeds: int) -> None:
    """Both arms with all their seeds, paired; `better` ahead in attribute accuracy at the last
    evaluation, with the right sign and significant after Holm."""
    names = {a["name"]: a for a in result["arms"]}
    assert names[better]["n"] == names[worse]["n"] == seeds
    final = next(p for p in result["pairs"] if p["metric"] == ACC and p["summary"] == "final")
    assert final["test"] == "paired t"
    assert {final["a"], final["b"]} == {better, worse}
    sign = 1 if final["a"] == better else -1
    assert sign * final["diff"] > 0, final
    assert final["p_adjusted"] < 0.05, final
    assert final["verdict"] == f"{better} better"
    # The other metrics are reported with their own verdicts, none of them about attribute accuracy.
    assert len({(p["metric"], p["summary"]) for p in result["pairs"]}) == len(result["pairs"])


