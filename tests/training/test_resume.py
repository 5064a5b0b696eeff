"""Resume: a resumed run continues in its own run folder (one whole curve), cut back to the
resumed step with nothing lost; into a new folder when asked, recording where it came from."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from runs import TINY_EVAL, make_dataset
from runs import shrunk_quickstart as config
from tiframework.sd.embeddings import load_embedding
from tiframework.training.train import train


def steps_in(path: Path) -> list[int]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


def test_resume_continues_in_its_own_folder(tmp_path, make_tiny_parts):
    ref = make_dataset(tmp_path / "ref", n=2, caption=None)
    common = ["training.save_every=2", "eval.every=2", f"eval.reference={ref}", "preview.every=2",
              "preview.steps=1", "preview.prompts=[\"[name]\"]", *TINY_EVAL]
    first = train(config(tmp_path, "training.max_steps=6", "logging.run_id=run", *common), parts=make_tiny_parts())
    run = Path(first["run_dir"])
    before = {"metrics": steps_in(run / "metrics.csv"), "eval": steps_in(run / "eval.csv")}
    assert before == {"metrics": [1, 2, 3, 4, 5, 6], "eval": [0, 2, 4, 6]}

    again = train(config(tmp_path, "training.max_steps=6", *common,
                         f"resume={run / 'embeddings' / 'kiri_ti-2.pt'}"), parts=make_tiny_parts())
    assert again["run_dir"] == str(run)
    # one whole curve: every step once, the rows up to step 2 kept, the rest measured again
    assert steps_in(run / "metrics.csv") == [1, 2, 3, 4, 5, 6]
    assert steps_in(run / "eval.csv") == [0, 2, 4, 6]
    assert again["resumed_from"] == {"file": str(run / "embeddings" / "kiri_ti-2.pt"), "step": 2}
    assert torch.equal(load_embedding(again["embedding"]).vectors, load_embedding(first["embedding"]).vectors)
    # nothing lost: what lay past step 2 is in history/
    [history] = (run / "history").iterdir()
    assert history.name.endswith("-resumed-at-2")
    assert steps_in(history / "metrics.csv") == [1, 2, 3, 4, 5, 6]
    assert json.loads((history / "summary.json").read_text())["final_step"] == 6
    moved = {p.name for p in (history / "embeddings").iterdir()}
    assert {"kiri_ti-4.pt", "kiri_ti-6.pt.optim", "kiri_ti.pt"} <= moved
    assert {p.name for p in (history / "previews").iterdir()} >= {"step-000004-0.png", "strip-0.png"}
    # the strip was rebuilt: steps 0..6 once each, not 0, 2, 4, 6, 4, 6
    from PIL import Image

    with Image.open(run / "previews" / "strip-0.png") as strip, \
            Image.open(run / "previews" / "step-000000-0.png") as cell:
        assert strip.width == 4 * cell.width


def test_resume_into_a_new_folder_records_its_source(tmp_path, make_tiny_parts):
    first = train(config(tmp_path, "training.max_steps=2", "training.save_every=2", "logging.run_id=a"),
                  parts=make_tiny_parts())
    source = Path(first["run_dir"])
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    branch = train(config(tmp_path, "training.max_steps=4", "logging.run_id=b", f"resume={source}"),
                   parts=make_tiny_parts())  # a run folder: its latest checkpoint
    assert Path(branch["run_dir"]).name == "b"
    assert branch["resumed_from"] == {"file": str(source / "embeddings" / "kiri_ti-2.pt"), "step": 2}
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before  # the source untouched
    assert steps_in(Path(branch["run_dir"]) / "metrics.csv") == [3, 4]
