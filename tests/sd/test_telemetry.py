"""Per-vector telemetry (`sd.telemetry`): by hand, in `embedding inspect`, and during training."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch

from runs import shrunk_quickstart as config
from tiframework.cli import main
from tiframework.sd.telemetry import still_init, telemetry_scalars, vector_telemetry
from tiframework.training.train import train


class Tokens:
    """A tokenizer stand-in: token id i is the word `w<i>`."""

    def convert_ids_to_tokens(self, ids):
        return [f"w{i}</w>" for i in ids]


TABLE = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 3.0]])  # norms 1, 2, 3: median 2


def test_telemetry_by_hand():
    vectors = torch.tensor([[4.0, 0.0], [1.0, 3.0]])
    init = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a, b = vector_telemetry(vectors, TABLE, Tokens(), init, k=2)
    assert (a.norm, a.relative_norm, a.cosine_to_init) == (4.0, 2.0, 1.0)
    assert a.nearest[0] == ("w0", 1.0) and a.nearest[1][1] == pytest.approx(0.0)
    assert b.relative_norm == pytest.approx(10 ** 0.5 / 2) and b.cosine_to_init == pytest.approx(3 / 10 ** 0.5)
    # w1 and w2 point the same way (a tie at 3/sqrt(10)); w0 is further (1/sqrt(10)).
    assert {t for t, _ in b.nearest} == {"w1", "w2"} and b.nearest[0][1] == pytest.approx(3 / 10 ** 0.5)
    assert not still_init([a, b]) and still_init([a])
    scalars = telemetry_scalars([a, b])
    assert scalars["vectors/cosine_to_init_min"] == pytest.approx(3 / 10 ** 0.5)
    assert scalars["vectors/relative_norm_max"] == pytest.approx(2.0)
    assert vector_telemetry(vectors, TABLE, Tokens())[0].cosine_to_init is None  # no init given


def test_inspect_shows_telemetry_and_warns_about_an_untrained_embedding(tmp_path, capsys):
    out = tmp_path / "e.pt"
    assert main(["embedding", "create", "--model", "tiny", "--name", "zorblax", "--init-text", "red hair",
                 "--vpt", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["embedding", "inspect", str(out), "--model", "tiny", "--init-text", "red hair", "--json"]) == 0
    got = capsys.readouterr()
    rows = json.loads(got.out)["telemetry"]
    assert [r["cosine_to_init"] for r in rows] == [1.0, 1.0]
    assert rows[0]["nearest"][0] == ["red", 1.0] and rows[1]["nearest"][0] == ["hair", 1.0]
    assert "essentially its init text" in got.err


def test_training_logs_telemetry_and_warns_when_still_the_init_text(tmp_path, tiny_parts, caplog):
    with caplog.at_level(logging.WARNING):
        summary = train(config(tmp_path, "training.learning_rate=1e-9", "training.save_every=2",
                               "embedding.init_text=red hair"), parts=tiny_parts)
    with open(Path(summary["run_dir"]) / "vectors.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    vpt = config(tmp_path).embedding.vectors_per_token
    assert [r["step"] for r in got] == ["2"] * vpt + ["4"] * vpt
    assert float(got[-1]["cosine_to_init"]) > 0.99 and ":" in got[-1]["nearest"]
    assert "essentially its init text" in caplog.text
