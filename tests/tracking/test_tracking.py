"""W&B and local run records, the eval callback and `tiframework eval` on the tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from runs import make_dataset
from runs import shrunk_quickstart as config
from tiframework.cli import main
from tiframework.errors import UserError
from tiframework.training.train import train
from tiny_tagger import build_model, write_csv
from wandb_reader import read_run


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def eval_config(tmp_path: Path, *extra: str):
    ref = tmp_path / "reference"
    if not ref.exists():
        make_dataset(ref, n=2, caption=None)
    return config(tmp_path, f"eval.reference={ref}", *extra)


def test_offline_wandb_run_holds_scalars_images_and_artifact(tmp_path, tiny_parts):
    cfg = eval_config(tmp_path, "logging.wandb=true", "training.max_steps=4", "eval.every=2",
                      "preview.every=2", "preview.steps=2", "preview.prompts=[]", "preview.seeds=[0]",
                      "logging.wandb_tags=[ablation]")
    summary = train(cfg, parts=tiny_parts)
    run = read_run(Path(summary["run_dir"]))
    keys = {k.split("/images/")[0] + "/images" if "/images/" in k else k for k in set().union(*run["history"])}
    assert {"train/loss", "train/lr", "train/vector_norm", "eval/clip_fidelity", "eval/clip_flexibility",
            "eval/clip_fidelity_se", "select/clip_fidelity", "select/clip_fidelity_se", "preview/images"} <= keys
    fidelity_steps = [h["train/step"] for h in run["history"] if "eval/clip_fidelity" in h]
    assert fidelity_steps == [0, 2, 4]
    # Plotted against the optimizer step they were measured at, not W&B's row counter.
    assert run["metrics"]["eval/clip_fidelity"] == run["metrics"]["preview/images"] == "train/step"
    assert run["config"]["seed"] == 0 and "arm" not in run["config"]
    assert run["summary"]["eval/best_step"] in (0, 2, 4) and run["summary"]["eval/final_step"] == 4
    # Optimizer step 1 is train/step 1, as in a population member's run (issue 22).
    assert [h["train/step"] for h in run["history"] if "train/loss" in h] == [1, 2, 3, 4]
    assert run["metrics"]["train/loss"] == run["metrics"]["train/lr"] == "train/step"
    # Every metric of the chosen checkpoint's eval row is in the summary.
    chosen = next(h for h in run["history"] if h.get("train/step") == run["summary"]["eval/best_step"]
                  and "eval/clip_fidelity" in h)
    for key in ("eval/clip_fidelity", "eval/clip_flexibility", "select/clip_fidelity", "eval/fried"):
        assert run["summary"][f"chosen/{key}"] == pytest.approx(chosen[key])
    assert summary["chosen_metrics"]["eval/clip_fidelity"] == pytest.approx(chosen["eval/clip_fidelity"])
    assert run["run"].run_group == "test" and run["run"].job_type == "train"
    assert {"ablation", "vpt=4", "lr=0.02", "accum=1"} <= set(run["run"].tags)
    assert any(name.startswith("kiri_ti-embedding") for name in run["artifacts"])
    images = list((run["dir"] / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == 3 * 2  # steps 0, 2, 4 x two default prompts ([name] and a caption)


def test_wandb_run_is_finished_when_training_raises(tmp_path, tiny_parts, monkeypatch):
    import wandb

    from tiframework.training.module import TextualInversionModule

    def boom(self, batch):
        raise RuntimeError("boom")

    monkeypatch.setattr(TextualInversionModule, "noise_loss", boom)
    with pytest.raises(RuntimeError, match="boom"):
        train(config(tmp_path, "logging.wandb=true", "training.max_steps=2"), parts=tiny_parts)
    assert wandb.run is None


def test_eval_rows_baseline_intervals_and_summary(tmp_path, tiny_parts):
    rows = []
    summary = train(eval_config(tmp_path, "training.max_steps=5", "eval.every=2"), parts=tiny_parts,
                    on_eval=rows.append)
    assert [r["step"] for r in rows] == [0, 2, 4, 5]  # baseline, every 2, and the final step
    table = list(csv.DictReader(open(Path(summary["run_dir"]) / "eval.csv")))
    assert [int(r["step"]) for r in table] == [0, 2, 4, 5]
    assert float(table[0]["eval/clip_fidelity"]) == pytest.approx(rows[0]["eval/clip_fidelity"])
    stored = json.loads((Path(summary["run_dir"]) / "summary.json").read_text())
    for key in ("best_step", "best_score", "best_score_selection", "baseline_score", "final_step", "final_score",
                "plateau_step", "plateau_reason", "plateau_noise"):
        assert key in stored
    # the best checkpoint is chosen on the selection seeds and reported on the held-out ones
    chosen = max(rows, key=lambda r: r["select/clip_fidelity"])
    assert stored["best_step"] == chosen["step"]
    assert stored["best_score"] == chosen["eval/clip_fidelity"]
    assert stored["best_score_selection"] == chosen["select/clip_fidelity"]
    assert stored["final_score"] == rows[-1]["eval/clip_fidelity"]
    assert stored["plateau_reason"] in ("plateau", "still_rising", "no_gain")
    assert Path(stored["best_embedding"]).is_file()  # kept although save_every is 0


def test_eval_files_follow_the_contract(tmp_path, tiny_parts):
    summary = train(eval_config(tmp_path, "training.max_steps=2", "eval.every=2", "eval.seeds=[3, 4]",
                                "eval.flexibility_prompts=[\"[name], from behind\"]"), parts=tiny_parts)
    run = Path(summary["run_dir"])
    table = list(csv.DictReader(open(run / "eval.csv")))
    header = list(table[0])
    assert header[0] == "step"
    for metric in ("eval/clip_fidelity", "eval/clip_fidelity_best_match", "eval/clip_flexibility",
                   "select/clip_fidelity"):
        assert {metric, metric + "_se"} <= set(header)
        assert all(float(r[metric + "_se"]) >= 0 for r in table)  # two images each: a finite SE
    assert {"eval/fried", "eval/vector_norm", "eval/clip_fidelity_best"} <= set(header)
    assert not {"eval/fried_se", "eval/vector_norm_se"} & set(header)
    per_image = list(csv.DictReader(open(run / "eval_per_image.csv")))
    assert [(int(r["step"]), int(r["seed"])) for r in per_image] == [(0, 3), (0, 4), (2, 3), (2, 4)]
    for row in table:
        values = [float(r["eval/clip_fidelity"]) for r in per_image if r["step"] == row["step"]]
        assert sum(values) / 2 == pytest.approx(float(row["eval/clip_fidelity"]), abs=1e-6)
    shots = sorted(p.name for p in (run / "eval_images").iterdir())
    assert shots == ["step-000000.png", "step-000002.png"]
    with Image.open(run / "eval_images" / shots[0]) as im:
        assert im.height <= 96 and im.width <= 2 * 96 and im.width == 2 * im.height  # two seeds, one row


def test_trait_recall_and_leak_reach_eval_csv_and_wandb(tmp_path, tiny_parts):
    # The tiny tagger always finds long_hair (0.4) and never 1girl (0.3): recall is exactly 1/2.
    (tmp_path / "wd14").mkdir()
    model = build_model(tmp_path / "wd14" / "model.onnx")
    write_csv(tmp_path / "wd14" / "selected_tags.csv")
    cfg = eval_config(tmp_path, "training.max_steps=2", "eval.every=2", "eval.seeds=[0, 1]", "logging.wandb=true",
                      f"eval.tagger={model}", "eval.traits=[long hair, 1girl]",
                      "eval.flexibility_prompts=[\"[name], from behind\"]",
                      "eval.trait_leak=[{prompt: '[name], from behind', tags: [long_hair]}]")
    summary = train(cfg, parts=tiny_parts)
    table = list(csv.DictReader(open(Path(summary["run_dir"]) / "eval.csv")))
    for row in table:
        assert float(row["eval/trait_recall"]) == 0.5 and float(row["eval/trait_recall_se"]) == 0.0
        assert float(row["eval/trait_leak"]) == 1.0 and float(row["eval/trait_leak_se"]) == 0.0
    keys = set().union(*read_run(Path(summary["run_dir"]))["history"])
    assert {"eval/trait_recall", "eval/trait_recall_se", "eval/trait_leak", "eval/trait_leak_se"} <= keys


def test_fried_previews_and_not_learning_warn(tmp_path, tiny_parts):
    # A random tiny model's images look nothing like the reference: with a low fried
    # threshold and a large required gain both diagnostics must fire.
    summary = train(eval_config(tmp_path, "training.max_steps=2", "eval.every=2", "eval.fried_threshold=0.01",
                                "eval.verdict_after=2", "eval.verdict_margin=0.5"), parts=tiny_parts)
    assert any("fried" in w for w in summary["warnings"])
    assert any("not learning" in w for w in summary["warnings"])


def test_exploding_vector_norm_stops(tmp_path, tiny_parts):
    summary = train(eval_config(tmp_path, "training.max_steps=6", "eval.every=100", "eval.max_vector_norm=0.0001"),
                    parts=tiny_parts)
    assert "eval.max_vector_norm" in summary["stopped"] and summary["final_step"] == 1


def test_bad_eval_config_fails_before_training(tmp_path, tiny_parts):
    with pytest.raises(UserError, match="eval.reference"):
        train(config(tmp_path, f"eval.reference={tmp_path / 'nope'}", "eval.every=1"), parts=tiny_parts)
    with pytest.raises(UserError, match=r"\[name\]"):
        train(eval_config(tmp_path, "eval.every=1", "eval.prompts=[\"1girl\"]"), parts=tiny_parts)
    with pytest.raises(UserError, match="clip"):
        train(eval_config(tmp_path, "eval.every=1", "eval.clip_model=ViT-Nonexistent"), parts=tiny_parts)
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_eval_command_scores_a_finished_run(tmp_path, tiny_parts, capsys):
    summary = train(eval_config(tmp_path, "training.max_steps=4", "training.save_every=2"), parts=tiny_parts)
    run = Path(summary["run_dir"])
    assert not (run / "eval.csv").exists()
    assert main(["eval", str(run), "--reference", str(tmp_path / "reference"), "eval.clip_model=tif-tiny-clip",
                 "eval.steps=2"]) == 0
    table = list(csv.DictReader(open(run / "eval.csv")))
    assert [int(r["step"]) for r in table] == [0, 2, 4]
    stored = json.loads((run / "summary.json").read_text())
    assert stored["best_step"] in (0, 2, 4)
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
