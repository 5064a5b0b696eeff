"""`kill -9` while training, and while a file is being saved: resuming the run folder then
gives exactly the vectors of a run that was never interrupted (CPU), in one whole curve."""

from __future__ import annotations

import csv
import signal
import time
from pathlib import Path

import pytest
import torch

from reliability import tif
from runs import QUICKSTART, shrink_overrides
from tiframework.sd.embeddings import load_embedding

pytestmark = pytest.mark.slow
STEPS = 12


def train_args(tmp: Path, *extra: str) -> list[str]:
    return ["train", str(QUICKSTART), *shrink_overrides(tmp), f"training.max_steps={STEPS}",
            "training.save_every=2", *extra]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> torch.Tensor:
    """The final vectors of the same run, never interrupted."""
    tmp = tmp_path_factory.mktemp("straight")
    done = tif(*train_args(tmp, "logging.run_id=straight"), cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_embedding(tmp / "runs" / "test" / "straight" / "embeddings" / "kiri_ti.pt").vectors


def resume_and_check(tmp: Path, run: Path, straight: torch.Tensor) -> None:
    done = tif(*train_args(tmp, f"resume={run}"), cwd=tmp)  # the run folder: its latest checkpoint
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.equal(load_embedding(run / "embeddings" / "kiri_ti.pt").vectors, straight)
    with (run / "metrics.csv").open(newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == list(range(1, STEPS + 1))  # one whole curve
    assert not [p for p in run.rglob(".*.tmp")]  # nothing half-written is left


def test_kill_9_during_training_then_resume_is_exact(tmp_path, straight):
    proc = tif(*train_args(tmp_path, "logging.run_id=killed"), cwd=tmp_path, wait=False)
    run = tmp_path / "runs" / "test" / "killed"
    deadline = time.monotonic() + 600
    while not (run / "embeddings" / "kiri_ti-2.pt").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "embeddings" / "kiri_ti.pt").exists()  # it really died mid-run
    resume_and_check(tmp_path, run, straight)


def test_kill_9_during_a_save_leaves_nothing_a_resume_trips_on(tmp_path, straight):
    # The .pt is written last (after its .optim and .safetensors): dying on it leaves the most behind.
    dying_on = "kiri_ti-4.pt"
    done = tif(*train_args(tmp_path, "logging.run_id=killed"), cwd=tmp_path, kill_writing=dying_on)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    run = tmp_path / "runs" / "test" / "killed"
    assert [p.name for p in (run / "embeddings").glob(f".{dying_on}.*.tmp")]  # killed half-way through it
    assert not (run / "embeddings" / "kiri_ti-4.pt").exists()  # the checkpoint never became visible
    assert load_embedding(run / "embeddings" / "kiri_ti-2.pt").step == 2
    resume_and_check(tmp_path, run, straight)
