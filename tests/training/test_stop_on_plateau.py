"""`training.stop_on_plateau`: a run ends once its fidelity plateau is confirmed, keeping its best
checkpoint; a still-rising run trains to the end.

The fast tests script the evaluator's scores (tiny preset), so the curve is known exactly;
the slow one trains the toy world for real. The toy world's still-rising case is checked on the
research check's run (tests/test_research_check.py: the quickstart's curve at step 120).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from runs import make_dataset, needs_toy_weights
from runs import shrunk_quickstart as config
from tiframework.evaluation.evaluator import Evaluator
from tiframework.training.train import train

F, SELECT = "eval/clip_fidelity", "select/clip_fidelity"
ROOT = Path(__file__).resolve().parents[2]


def scripted(monkeypatch, curve) -> None:
    """The evaluator returns `curve(step)` for every image (two images, a fixed offset each:
    their paired difference has no noise at all)."""

    def score(self, vectors, step):
        y = curve(step)
        self.last_images = [Image.new("RGB", (32, 32), "white")] * 2
        self.last_per_image = [{"step": step, "prompt": "[name]", "seed": s, F: y + off}
                               for s, off in ((0, -0.01), (1, 0.01))]
        return {"step": step, F: y, F + "_se": 0.01, SELECT: y, SELECT + "_se": 0.01,
                "eval/fried": 1.0, "eval/vector_norm": 1.0}

    monkeypatch.setattr(Evaluator, "score", score)


def stop_config(tmp_path: Path, *extra: str):
    ref = tmp_path / "reference"
    if not ref.exists():
        make_dataset(ref, n=2, caption=None)
    return config(tmp_path, f"eval.reference={ref}", "training.max_steps=12", "eval.every=1",
                  "training.stop_on_plateau=true", *extra)


def test_a_run_stops_once_its_plateau_is_confirmed_and_keeps_its_best(tmp_path, tiny_parts, monkeypatch):
    scripted(monkeypatch, lambda step: 0.1 + 0.05 * min(step, 4))  # flat from step 4
    summary = train(stop_config(tmp_path), parts=tiny_parts)
    assert (summary["plateau_step"], summary["plateau_reason"]) == (4, "plateau")
    # patience 2: the evaluations at steps 5 and 6 confirm it, and the run ends there
    assert summary["stopped_on_plateau"] == {"at_step": 6, "plateau_step": 4, "steps_saved": 6}
    assert summary["final_step"] == 6 and summary["stopped"] is None
    assert summary["best_step"] == 4  # ties go to the earliest checkpoint
    assert Path(summary["best_embedding"]).name == "kiri_ti-4.pt" and Path(summary["best_embedding"]).is_file()
    rows = list(csv.DictReader(open(Path(summary["run_dir"]) / "metrics.csv")))
    assert int(rows[-1]["step"]) == 6
    assert json.loads((Path(summary["run_dir"]) / "summary.json").read_text())["stopped_on_plateau"]["steps_saved"] == 6


def test_a_still_rising_run_trains_to_the_end(tmp_path, tiny_parts, monkeypatch):
    scripted(monkeypatch, lambda step: 0.1 + 0.01 * step)
    summary = train(stop_config(tmp_path), parts=tiny_parts)
    assert summary["plateau_reason"] == "still_rising" and summary["stopped_on_plateau"] is None
    assert summary["final_step"] == 12 and summary["best_step"] == 12


def test_a_plateau_confirmed_at_the_last_step_is_no_stop(tmp_path, tiny_parts, monkeypatch):
    scripted(monkeypatch, lambda step: 0.1 + 0.05 * min(step, 10))  # confirmed by steps 11 and 12
    summary = train(stop_config(tmp_path), parts=tiny_parts)
    assert (summary["plateau_step"], summary["final_step"], summary["stopped_on_plateau"]) == (10, 12, None)


def test_without_the_switch_a_plateaued_run_goes_on(tmp_path, tiny_parts, monkeypatch):
    scripted(monkeypatch, lambda step: 0.1 + 0.05 * min(step, 4))
    summary = train(stop_config(tmp_path, "training.stop_on_plateau=false"), parts=tiny_parts)
    assert summary["final_step"] == 12 and summary["stopped_on_plateau"] is None
    assert summary["plateau_step"] == 4


# --- the toy world, for real --------------------------------------------------------------------

TOY = ["eval.flexibility_prompts=[]", "eval.trait_leak=[]",
       "training.stop_on_plateau=true", "training.save_every=0", "preview.every=0", "logging.wandb=false",
       "logging.progress_bar=false"]


def toy_run(tmp_path: Path, *extra: str) -> dict:
    from tiframework.config import load_config

    cfg = load_config(ROOT / "experiments" / "quickstart.yaml",
                      [*TOY, f"logging.runs_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", *extra])
    return train(cfg)


@pytest.mark.slow
@needs_toy_weights
def test_toy_world_high_learning_rate_plateaus_and_stops_early(tmp_path):
    # lr 0.2 (10x the quickstart's): fidelity jumps within 10 steps and goes no higher (measured
    # with 5 sampling steps per eval image, half the quickstart's: 0.137, 0.336, 0.295, 0.325 at
    # steps 0-30, stopped at 30 of the 200 steps, 170 saved; with 10: 0.167, 0.336, 0.331, 0.311, the same stop)
    summary = toy_run(tmp_path, "training.learning_rate=0.2", "eval.every=10", "eval.steps=5")
    assert summary["plateau_reason"] == "plateau"
    stop = summary["stopped_on_plateau"]
    assert stop is not None and stop["steps_saved"] > 0 and summary["final_step"] < 200
    assert Path(summary["best_embedding"]).is_file()
