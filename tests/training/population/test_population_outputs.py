"""A population member's run folder, evaluation and W&B run are a solo run's.

Evaluation tolerance: a member's vectors match its solo run's to float32 rounding
(test_population.py's TOL), and its eval images are drawn in shared sampler calls
(tests/evaluation/test_batched.py); measured here on the tiny preset, eval.csv values differ
by at most ~1e-6, so EVAL_TOL = 1e-4.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from runs import TINY_EVAL, make_dataset
from runs import shrunk_quickstart as config
from tiframework.errors import UserError
from tiframework.evaluation.evaluator import Evaluator
from tiframework.sd.embeddings import load_embedding
from tiframework.training.population.module import MemberCallback
from tiframework.training.population.train import train_population
from tiframework.training.train import train
from wandb_reader import read_run

EVAL_TOL = 1e-4
F, SELECT = "eval/clip_fidelity", "select/clip_fidelity"


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def files(run: Path) -> set[str]:
    """A run folder's files, less W&B's own folder and history/ (named by the time of a resume)."""
    return {str(p.relative_to(run)) for p in run.rglob("*")
            if p.is_file() and not {"wandb", "history"} & set(p.relative_to(run).parts)}


def with_eval(tmp_path: Path, *extra: str) -> list[str]:
    ref = tmp_path / "reference"
    if not ref.exists():
        make_dataset(ref, n=2, caption=None)
    return [f"eval.reference={ref}", "preview.steps=1", "preview.prompts=[\"[name]\"]",
            *extra]


def assert_same_run(pop: dict, alone: dict) -> None:
    """Same files, same eval rows (within EVAL_TOL), same summary keys and numbers."""
    run, solo_run = Path(pop["run_dir"]), Path(alone["run_dir"])
    assert files(run) == files(solo_run)
    for name in ("eval.csv", "eval_per_image.csv"):
        got, want = rows(run / name), rows(solo_run / name)
        assert [list(r) for r in got] == [list(r) for r in want]
        for g, w in zip(got, want, strict=True):
            for key, value in w.items():
                if key in ("prompt",):
                    assert g[key] == value
                else:
                    assert float(g[key]) == pytest.approx(float(value), abs=EVAL_TOL, nan_ok=True), (name, key)
    assert list(pop) == list(alone)  # the same summary.json keys, in the same order
    for key in ("final_step", "best_step", "plateau_step", "plateau_reason", "stopped", "stopped_on_plateau"):
        assert pop[key] == alone[key], key
    for key in ("best_score", "baseline_score", "final_score"):
        assert pop[key] == pytest.approx(alone[key], abs=EVAL_TOL), key
    assert pop["eval_settings"] == alone["eval_settings"]
    assert json.loads((run / "summary.json").read_text()) == pop


def test_a_member_with_evaluation_and_previews_is_a_solo_run(tmp_path, tiny_parts):
    # a: evaluations at 0, 2, 4 and the last step 5, previews, saves at 3; b evaluates every step, so
    # at steps 2 and 4 both are scored in shared sampler calls; c does not evaluate at all.
    members = {
        "a": with_eval(tmp_path, "training.max_steps=5", "training.save_every=3", "eval.every=2", "preview.every=2"),
        "b": with_eval(tmp_path, "training.seed=1", "embedding.vectors_per_token=2", "training.max_steps=4",
                       "eval.every=1"),
        "c": ["training.seed=2", "training.max_steps=3"],
    }
    pop = train_population([config(tmp_path, *o, f"logging.run_id={k}") for k, o in members.items()],
                           parts=tiny_parts)
    alone = {k: train(config(tmp_path, *o, f"logging.run_id={k}-solo"), parts=tiny_parts) for k, o in members.items()}
    assert_same_run(pop[0], alone["a"])
    assert_same_run(pop[1], alone["b"])
    assert files(Path(pop[2]["run_dir"])) == files(Path(alone["c"]["run_dir"]))
    a = Path(pop[0]["run_dir"])
    assert [r["step"] for r in rows(a / "eval.csv")] == ["0", "2", "4", "5"]
    assert {"previews/step-000000-0.png", "previews/step-000004-0.png", "previews/strip-0.png",
            "eval_images/step-000005.png", "embeddings/kiri_ti-3.pt.optim"} <= files(a)
    with Image.open(a / "previews" / "strip-0.png") as strip, \
            Image.open(Path(alone["a"]["run_dir"]) / "previews" / "strip-0.png") as solo_strip:
        assert strip.size == solo_strip.size  # steps 0, 2, 4 side by side
    assert Path(pop[0]["best_embedding"]).is_file()


def scripted(monkeypatch, curves) -> None:
    """Each member's evaluator scores `curves[name](step)` for every image (no noise at all), in
    the population's batched path and a solo run's alike (both end in `score_images`)."""

    def score_images(self, images, vectors, step):
        y = curves[self.cfg.embedding.name](step)
        self.last_images = [Image.new("RGB", (32, 32), "white")] * 2
        self.last_per_image = [{"step": step, "prompt": "[name]", "seed": s, F: y + off}
                               for s, off in ((0, -0.01), (1, 0.01))]
        return {"step": step, F: y, F + "_se": 0.01, SELECT: y, SELECT + "_se": 0.01,
                "eval/fried": 1.0, "eval/vector_norm": 1.0}

    monkeypatch.setattr(Evaluator, "score_images", score_images)


def test_a_plateaued_member_leaves_and_the_others_go_on(tmp_path, tiny_parts, monkeypatch):
    scripted(monkeypatch, {"flat_ti": lambda step: 0.1 + 0.05 * min(step, 4),  # flat from step 4
                           "kiri_ti": lambda step: 0.1 + 0.01 * step})  # still rising
    stop = with_eval(tmp_path, "training.max_steps=8", "eval.every=1", "training.stop_on_plateau=true",
                     "preview.every=0")
    flat = [*stop, "embedding.name=flat_ti"]
    seen = []

    class Rows(MemberCallback):
        def on_member_eval(self, trainer, population, member, row):
            seen.append((member.name, row["step"]))

    plateaued, rising = train_population([config(tmp_path, *flat, "logging.run_id=flat"),
                                          config(tmp_path, *stop, "training.seed=1", "logging.run_id=rising")],
                                         parts=tiny_parts, callbacks=[Rows()])
    # patience 2: the evaluations at steps 5 and 6 confirm the plateau, and that member leaves there
    assert plateaued["stopped_on_plateau"] == {"at_step": 6, "plateau_step": 4, "steps_saved": 2}
    assert plateaued["final_step"] == 6 and plateaued["stopped"] is None
    assert Path(plateaued["best_embedding"]).name == "flat_ti-4.pt"
    assert rising["final_step"] == 8 and rising["stopped_on_plateau"] is None
    assert [s for n, s in seen if n == "flat_ti"] == list(range(7))
    assert [s for n, s in seen if n == "kiri_ti"] == list(range(9))
    assert_same_run(plateaued, train(config(tmp_path, *flat, "logging.run_id=flat-solo"), parts=tiny_parts))


def test_each_member_has_its_own_wandb_run(tmp_path, tiny_parts, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    common = with_eval(tmp_path, "logging.wandb=true", "training.max_steps=4", "eval.every=2", "preview.every=2")
    a, b = train_population([config(tmp_path, *common, "logging.run_id=a"),
                             config(tmp_path, *common, "training.seed=1", "embedding.name=bee_ti",
                                    "logging.run_id=b")], parts=tiny_parts)
    assert wandb.run is None
    ids = set()
    for summary, name in ((a, "kiri_ti"), (b, "bee_ti")):
        run = read_run(Path(summary["run_dir"]))
        keys = {k.split("/images/")[0] + "/images" if "/images/" in k else k for k in set().union(*run["history"])}
        assert {"train/loss", "train/lr", "train/vector_norm", F, SELECT, "preview/images"} <= keys
        assert [h["train/step"] for h in run["history"] if F in h] == [0, 2, 4]
        assert [h["train/step"] for h in run["history"] if "train/loss" in h] == [1, 2, 3, 4]  # as solo
        assert run["metrics"]["train/loss"] == "train/step"
        assert run["summary"][f"chosen/{F}"] == pytest.approx(summary["chosen_metrics"][F])
        assert [name in a for a in run["artifacts"]] == [True]
        assert run["run"].run_group == "test"
        ids.add(run["run"].run_id)
    assert len(ids) == 2  # two runs, not one shared by both members


def test_a_member_resumes_in_its_own_run_folder(tmp_path, tiny_parts):
    common = with_eval(tmp_path, "training.save_every=2", "eval.every=2", "preview.every=2", "training.max_steps=6")
    first = train(config(tmp_path, *common, "training.max_steps=4", "logging.run_id=run"), parts=tiny_parts)
    solo_copy = train(config(tmp_path, *common, "training.max_steps=4", "logging.run_id=solo"), parts=tiny_parts)
    run = Path(first["run_dir"])
    resumed, other = train_population([config(tmp_path, *common, f"resume={run}"),
                                       config(tmp_path, *TINY_EVAL, "training.seed=3", "logging.run_id=other")],
                                      parts=tiny_parts)
    assert resumed["run_dir"] == str(run) and resumed["final_step"] == 6
    assert [r["step"] for r in rows(run / "metrics.csv")] == ["1", "2", "3", "4", "5", "6"]
    assert [r["step"] for r in rows(run / "eval.csv")] == ["0", "2", "4", "6"]
    assert resumed["resumed_from"]["step"] == 4
    alone = train(config(tmp_path, *common, f"resume={solo_copy['run_dir']}"), parts=tiny_parts)
    assert alone["run_dir"] == solo_copy["run_dir"]
    assert_same_run(resumed, alone)
    diff = (load_embedding(resumed["embedding"]).vectors - load_embedding(alone["embedding"]).vectors).abs().max()
    assert diff.item() <= 1e-5
    assert other["final_step"] == 4 and other["run_dir"] != str(run)
    with pytest.raises(UserError, match="same run folder"):
        train_population([config(tmp_path, *common, "training.max_steps=8", f"resume={run}"),
                          config(tmp_path, *common, "training.max_steps=8", f"resume={run}")], parts=tiny_parts)
    assert torch.isfinite(load_embedding(resumed["embedding"]).vectors).all()
