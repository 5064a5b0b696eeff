"""The held-out validation loss (`training.validation`): scored without moving training."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from runs import make_dataset
from runs import shrunk_quickstart as config
from tiframework.config import ValidationConfig
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
