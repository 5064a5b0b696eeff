"""`tiframework eval RUN` never destroys results: what it replaces goes to the run's history/,
and the new summary names the eval settings that made the new table."""

from __future__ import annotations

import json
from pathlib import Path

from runs import TINY_EVAL, make_dataset
from runs import shrunk_quickstart as config
from tiframework.cli import main
from tiframework.training.train import train


def test_re_evaluation_keeps_what_it_replaces(tmp_path, tiny_parts):
    ref = make_dataset(tmp_path / "ref", n=2, caption=None)
    summary = train(config(tmp_path, "training.max_steps=2", "training.save_every=2", "eval.every=2",
                           f"eval.reference={ref}", *TINY_EVAL), parts=tiny_parts)
    run = Path(summary["run_dir"])
    assert summary["eval_settings"]["made_by"] == "training" and summary["eval_settings"]["seeds"] == [0]
    before = {name: (run / name).read_bytes() for name in ("eval.csv", "summary.json")}

    for seeds in ("[0,1]", "[2]"):
        assert main(["eval", str(run), f"eval.seeds={seeds}"]) == 0
    kept = sorted((run / "history").iterdir())
    assert len(kept) == 2 and all("-before-eval" in k.name for k in kept)
    assert {name: (kept[0] / name).read_bytes() for name in before} == before  # byte for byte
    second = json.loads((kept[1] / "summary.json").read_text())
    assert second["eval_settings"]["made_by"] == "tiframework eval" and second["eval_settings"]["seeds"] == [0, 1]
    now = json.loads((run / "summary.json").read_text())
    assert now["eval_settings"]["seeds"] == [2] and now["final_step"] == 2  # the run's own keys stay
