"""`kill -9` while training, and while a file is being saved, and Ctrl-C / SIGTERM: resuming the
run folder then gives exactly the vectors of a run that was never interrupted (CPU), in one
whole curve. Ctrl-C and SIGTERM also save the step they stop at, write summary.json
(`stopped: "interrupted"`), print the command that resumes and exit 130."""

from __future__ import annotations

import csv
import json
import re
import shlex
import signal
import time
from pathlib import Path

import pytest
import torch

from reliability import cases, tif
from runs import QUICKSTART, shrink_overrides
from tiframework.sd.embeddings import load_embedding

pytestmark = pytest.mark.slow
STEPS = 12
SIGNALS = cases({"Ctrl-C during training": "SIGINT once a checkpoint exists",
                 "SIGTERM during training": "a scheduler's kill (SIGTERM) once a checkpoint exists"})


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


def start_and_wait_for_a_checkpoint(tmp: Path, run: Path):
    proc = tif(*train_args(tmp, f"logging.run_id={run.name}"), cwd=tmp, wait=False)
    deadline = time.monotonic() + 600
    while not (run / "embeddings" / "kiri_ti-2.pt").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    return proc


def test_kill_9_during_training_then_resume_is_exact(tmp_path, straight):
    run = tmp_path / "runs" / "test" / "killed"
    proc = start_and_wait_for_a_checkpoint(tmp_path, run)
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


@pytest.mark.parametrize("kind", SIGNALS)
def test_ctrl_c_or_sigterm_saves_the_step_says_how_to_resume_and_resume_is_exact(tmp_path, straight, kind):
    run = tmp_path / "runs" / "test" / "stopped"
    proc = start_and_wait_for_a_checkpoint(tmp_path, run)
    sent = signal.SIGINT if kind.startswith("Ctrl-C") else signal.SIGTERM
    proc.send_signal(sent)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.rstrip().splitlines()[-1]
    m = re.fullmatch(rf"{sent.name}: saved step (\d+) to (\S+); resume with: (tiframework train .*)", last)
    assert m, last
    step, saved, command = int(m[1]), Path(m[2]), shlex.split(m[3])
    assert 2 <= step < STEPS and saved == run / "embeddings" / f"kiri_ti-{step}.pt"
    assert load_embedding(saved).step == step and saved.with_name(saved.name + ".optim").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] == "interrupted" and summary["final_step"] == step
    assert command[-1] == f"resume={run}" and "--fresh" not in command
    resume_and_check(tmp_path, run, straight)
