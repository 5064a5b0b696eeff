"""Known-truth checks of `tiframework compare` on real toy-world training (CPU).

The statistics are tested on made-up numbers in test_stats / test_compare; this test trains
real embeddings on the committed toy world and put them through the user-facing command
(`compare` on the run folders `train` wrote), where the truth is known by construction: two
arms with the same settings, told apart only by their training seeds, so every verdict must
be "no detectable difference".

Training is seeded and deterministic on one CPU thread count, so each test gives the same
numbers every time it runs on the same software; what could make one fail is listed with it.
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


def small_kiri(runs_dir: Path) -> list[str]:
    """The quickstart on the toy world, shorter: 20 steps, evaluated at 0 and 20 on 4 held-out
    images; no tagger (attribute accuracy is the toy world's ground truth), no saves or previews."""
    return ["training.max_steps=20", "eval.every=20", "eval.seeds=[0,1,2,3]", "eval.tagger=null",
            "eval.trait_leak=[]", "eval.flexibility_prompts=[\"[name], grass\"]", "preview.every=0",
            "training.save_every=0", "logging.wandb=false", "logging.progress_bar=false",
            f"logging.runs_dir={runs_dir}"]


@pytest.mark.slow
@needs_toy_weights
def test_two_arms_with_the_same_settings_show_no_detectable_difference(tmp_path, monkeypatch):
    """Arm "same-a" trains seeds 0-2, arm "same-b" seeds 3-5, with identical settings; the
    arms are formed from the run folders by `--by logging.experiment`, a key that changes
    nothing but the folder name. Unmatched seeds, so compare uses Welch's test.

    Could fail if: compare pooled or paired runs wrongly, ignored the spread between seeds
    (calling seed noise a difference), or Holm were not applied; or, by chance, with the
    probability Holm allows (at most 5% for the whole report; the numbers are fixed by the
    seeds, so a failure would repeat and should be looked at, not re-rolled)."""
    from tiframework.config import load_config
    from tiframework.sd.models import load_model
    from tiframework.training.train import train

    monkeypatch.chdir(ROOT)  # the toy world's dataset cache, shared with the other toy-world tests
    runs = tmp_path / "runs"
    parts = None
    for arm, seeds in (("same-a", (0, 1, 2)), ("same-b", (3, 4, 5))):
        for seed in seeds:
            cfg = load_config(QUICKSTART, [*small_kiri(runs), f"logging.experiment={arm}",
                                           f"logging.run_id=seed-{seed}", f"training.seed={seed}"])
            parts = parts or load_model(cfg.model)
            train(cfg, parts=parts)
    out = tmp_path / "cmp"
    assert main(["compare", str(runs / "same-a"), str(runs / "same-b"), "--by", "logging.experiment",
                 "--out", str(out), "--no-wandb"]) == 0
    result = json.loads((out / "comparison.json").read_text())
    assert [(a["name"], a["n"]) for a in result["arms"]] == [("experiment=same-a", 3), ("experiment=same-b", 3)]
    tested = [p for p in result["pairs"] if p["p"] is not None]
    metrics = {p["metric"] for p in tested}
    assert {"eval/clip_fidelity", "eval/clip_flexibility", ACC, "eval/fried"} <= metrics
    assert all(p["test"] == "Welch t" for p in tested)
    # The seeds do differ (a real spread, not identical runs), and no difference is called.
    assert all(p["sd"] > 0 for p in tested if p["metric"] != "plateau_step")
    assert [p["verdict"] for p in tested if not p["verdict"].startswith("no detectable difference")] == []
    assert all(p["p_adjusted"] >= 0.05 for p in tested)

