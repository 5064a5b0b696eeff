"""W&B and local run records, the eval callback and `tiframework eval` on the tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from runs import make_dataset
from runs import shrunk_quickstart as config
from wandb_reader import read_run

from tiframework.cli import main
from tiframework.errors import UserError
from tiframework.training.train import train


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
            "preview/images"} <= keys
    fidelity_steps = [h["train/step"] for h in run["history"] if "eval/clip_fidelity" in h]
    assert fidelity_steps == [0, 2, 4]
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
    for key in ("best_step", "best_score", "plateau_step", "baseline_score"):
        assert key in stored
    assert stored["best_score"] == max(r["eval/clip_fidelity"] for r in rows)


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
