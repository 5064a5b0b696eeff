"""The held-out validation loss (`training.validation`): scored without moving training."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from runs import make_dataset
from runs import shrunk_quickstart as config
from tiframework.config import ValidationConfig, config_from_dict
from tiframework.data.dataset import Item
from tiframework.errors import UserError
from tiframework.sd.embeddings import load_embedding
from tiframework.training.population.train import train_population
from tiframework.training.train import train
from tiframework.training.validation import split_items


def rows(summary: dict) -> list[dict[str, str]]:
    with open(Path(summary["run_dir"]) / "validation.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def final(summary: dict) -> torch.Tensor:
    return load_embedding(summary["embedding"]).vectors


def test_validation_leaves_training_bit_identical_and_is_logged(tmp_path, tiny_parts):
    held = make_dataset(tmp_path / "held", n=2)
    opts = ["training.loss_weighting=min_snr", "embedding.norm_control=decay"]
    plain = train(config(tmp_path, *opts, "logging.run_id=plain"), parts=tiny_parts)
    scored = train(config(tmp_path, *opts, "validation.every=1", f"validation.path={held}",
                          "logging.run_id=scored"), parts=tiny_parts)
    assert torch.equal(final(plain), final(scored))
    got = rows(scored)
    assert [r["step"] for r in got] == ["0", "1", "2", "3", "4"]
    assert set(got[0]) == {"step", "val/loss", "val/loss_t200", "val/loss_t400", "val/loss_t600", "val/loss_t800"}
    per_t = [float(got[0][f"val/loss_t{t}"]) for t in (200, 400, 600, 800)]
    assert float(got[0]["val/loss"]) == pytest.approx(sum(per_t) / 4, rel=1e-4)  # equal images per timestep
    assert scored["val_loss_final"] == pytest.approx(float(got[-1]["val/loss"]), rel=1e-5)
    assert scored["val_loss_best"] == pytest.approx(min(float(r["val/loss"]) for r in got), rel=1e-5)

    # A population member scores what the solo run scored, with the same fixed noise.
    member = train_population([config(tmp_path, *opts, "validation.every=2", f"validation.path={held}",
                                      "logging.run_id=member")], parts=tiny_parts)[0]
    assert [r["step"] for r in rows(member)] == ["0", "2", "4"]
    for r in rows(member):
        solo_row = next(s for s in got if s["step"] == r["step"])
        assert float(r["val/loss"]) == pytest.approx(float(solo_row["val/loss"]), rel=1e-4)


def test_the_split_is_seeded_holds_at_least_one_image_and_never_all():
    items = [Item(Path(f"{i:02d}.png"), "c", (64, 64), str(i)) for i in range(10)]
    v = ValidationConfig(every=5, split=0.1, seed=3)
    train_items, held = split_items(items, v)
    assert len(held) == 1 and len(train_items) == 9 and all(h not in train_items for h in held)
    assert split_items(list(reversed(items)), v)[1] == held  # chosen by name, not by listing order
    assert split_items(items, ValidationConfig(every=0))[1] == []  # off: nothing held out
    with pytest.raises(UserError, match="all 2 images"):
        split_items(items[:2], ValidationConfig(every=1, split=0.9))


def test_the_validation_loss_plateau_is_found_and_can_stop_a_run(tmp_path, tiny_parts, monkeypatch):
    # The tiny model's loss curve has no shape to speak of; a scripted one (falling to step 2,
    # then flat) checks the wiring: the detector's verdict stops a solo run and a member alike.
    from tiframework.training import validation
    from tiframework.training.population import watchers

    def scripted(parts, scheduler, vectors, vset, name, clip_skip, step):
        loss = max(0.6, 1.0 - 0.2 * step)
        return {"step": float(step), validation.LOSS: loss}, [loss + n for n in (0.01, -0.01, 0.02, -0.02)]

    monkeypatch.setattr(validation, "validation_row", scripted)
    monkeypatch.setattr(watchers, "validation_row", scripted)
    held = make_dataset(tmp_path / "held", n=2)
    opts = ["training.max_steps=8", "validation.every=1", f"validation.path={held}", "validation.stop_on_plateau=true"]
    alone = train(config(tmp_path, *opts, "logging.run_id=solo"), parts=tiny_parts)
    assert alone["final_step"] == 4 and alone["stopped"] is None
    assert alone["val_stopped_on_plateau"] == {"at_step": 4, "plateau_step": 2, "steps_saved": 4}
    assert (alone["val_plateau_step"], alone["val_plateau_reason"]) == (2, "plateau")
    assert [r["step"] for r in rows(alone)] == ["0", "1", "2", "3", "4"]
    member = train_population([config(tmp_path, *opts, "logging.run_id=member")], parts=tiny_parts)[0]
    assert member["final_step"] == 4 and member["val_stopped_on_plateau"] == alone["val_stopped_on_plateau"]
    assert torch.equal(final(member), final(alone)) or (final(member) - final(alone)).abs().max() < 1e-5
    # Without the stop the run goes on to its end; the summary still names the plateau.
    on = train(config(tmp_path, *opts[:-1], "logging.run_id=to-the-end"), parts=tiny_parts)
    assert on["final_step"] == 8 and on["val_plateau_step"] == 2 and on["val_stopped_on_plateau"] is None


def test_the_plateau_detector_reads_the_loss_as_a_score_to_lower():
    from tiframework.training.validation import LOSS, ValidationRecord

    record = ValidationRecord(Path("."), stop_before=10)
    record._append = record.rows.append  # no files: the detector only
    noise = [0.01, -0.01, 0.02, -0.02]
    stops = [record.write({"step": float(s), LOSS: loss}, [loss + n for n in noise])
             for s, loss in enumerate([1.0, 0.8, 0.6, 0.6, 0.6, 0.6])]
    # falling until step 2, then flat: the plateau is step 2, confirmed two evaluations later
    assert stops == [False, False, False, False, True, False]
    assert record.stopped_on_plateau == {"at_step": 4, "plateau_step": 2, "steps_saved": 6}
    assert record.summary()["val_plateau_step"] == 2
    with pytest.raises(UserError, match="validation.stop_on_plateau needs the validation loss"):
        config_from_dict({"validation": {"stop_on_plateau": True}}, source="test")
