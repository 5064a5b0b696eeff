"""A run folder is written by one run, never overwritten, keeps every checkpoint through a full
disk, and records where it came from: two commands with one run id started together, a disk
that fills after a checkpoint, `--fresh`, and provenance in a fresh clone's quickstart run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reliability import ROOT, assert_nothing_lost, cases, error_line, one_line, snapshot, tif
from runs import QUICKSTART, shrink_overrides
from runs import shrunk_quickstart as config
from tiframework.sd.embeddings import load_embedding
from tiframework.tracking.tracker import run_config
from tiframework.training.train import train

RUNS = cases({
    "two runs with one run id at once": "two `train ... logging.run_id=same` started together",
    "disk full after a checkpoint": "the disk fills while the second checkpoint is written",
})


def steps(run: Path) -> list[int]:
    with (run / "metrics.csv").open(newline="") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


@pytest.mark.slow
def test_two_runs_with_one_run_id_never_share_the_folder(tmp_path):
    args = ["train", str(QUICKSTART), *shrink_overrides(tmp_path), "training.max_steps=6", "logging.run_id=same"]
    procs = [tif(*args, cwd=tmp_path, wait=False) for _ in range(2)]
    done = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in done)
    assert codes == [0, 2], [err[-2000:] for _, _, err in done]
    refused = next(err for code, _, err in done if code == 2)
    assert "Traceback" not in refused
    one_line(error_line(refused), r"same: (this run id is taken by an earlier run|another tiframework run)")
    assert steps(tmp_path / "runs" / "test" / "same") == [1, 2, 3, 4, 5, 6]  # each step once


@pytest.mark.slow
def test_a_disk_that_fills_after_a_checkpoint_keeps_it_and_the_run_resumes(tmp_path):
    args = ["train", str(QUICKSTART), *shrink_overrides(tmp_path), "training.max_steps=6", "training.save_every=2",
            "logging.run_id=full"]
    done = tif(*args, cwd=tmp_path, fail_writing="kiri_ti-4.pt.optim")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    one_line(error_line(done.stderr), r"kiri_ti-4\.pt\.optim: cannot write \(the disk is full\); nothing half-written")
    run = tmp_path / "runs" / "test" / "full"
    kept = sorted(p.name for p in (run / "embeddings").iterdir())
    assert kept == ["kiri_ti-2.pt", "kiri_ti-2.pt.optim", "kiri_ti-2.safetensors"]  # the earlier checkpoint, whole
    assert load_embedding(run / "embeddings" / "kiri_ti-2.pt").step == 2
    before = snapshot(run / "embeddings")
    again = tif(*args[:-1], f"resume={run}", cwd=tmp_path)  # space freed: the run goes on from step 2
    assert again.returncode == 0, again.stderr[-3000:]
    assert_nothing_lost(run / "embeddings", before)
    assert json.loads((run / "summary.json").read_text())["final_step"] == 6


def test_fresh_moves_the_earlier_run_aside_untouched(tmp_path, tiny_parts):
    first = train(config(tmp_path, "training.max_steps=1", "logging.run_id=x"), parts=tiny_parts)
    old = Path(first["run_dir"])
    before = snapshot(old)
    again = train(config(tmp_path, "training.max_steps=2", "logging.run_id=x"), parts=tiny_parts, fresh=True)
    assert again["run_dir"] == str(old) and again["final_step"] == 2
    [aside] = old.parent.glob(".x.replaced-*")
    assert snapshot(aside) == before  # the earlier run, every file as it was


def test_provenance_is_in_the_run_folder_and_the_wandb_config(tmp_path, tiny_parts):
    summary = train(config(tmp_path, "training.max_steps=1"), parts=tiny_parts)
    origin = json.loads((Path(summary["run_dir"]) / "provenance.json").read_text())
    assert origin["code"]["tiframework"] and set(origin["code"]) == {"tiframework", "git_commit", "git_dirty"}
    assert {"python", "torch", "diffusers", "transformers", "open_clip_torch"} <= set(origin["packages"])
    assert origin["model"] == {"source": "preset:tiny", "hash": "preset:tiny"}
    assert origin["dataset"]["hash"].startswith("sha256:") and origin["device"].startswith("cpu")
    assert origin["command"]
    assert run_config(config(tmp_path), origin)["provenance"] == origin


@pytest.mark.slow
def test_a_fresh_clones_quickstart_run_records_its_commit(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=300)
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    env = {**os.environ, "PYTHONPATH": str(clone), "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "tiframework", "train", "experiments/quickstart.yaml",
                           *shrink_overrides(tmp_path), "training.max_steps=1"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = (tmp_path / "runs" / "test").iterdir()
    origin = json.loads((run / "provenance.json").read_text())
    assert origin["code"]["git_commit"] == head and origin["code"]["git_dirty"] is False
    assert "experiments/quickstart.yaml" in origin["command"]
