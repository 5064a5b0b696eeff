"""Bad inputs refused from the command line, before anything heavy runs: each is exit code 2,
exactly one `error:` line and no traceback, leaves every existing file as it was, and costs no
torch import (the refusals took 6-11 s of imports before). Run folders that exist, that another
process holds, or whose place is taken by a file are among them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reliability import ROOT, assert_nothing_lost, cases, error_line, one_line, snapshot
from runs import QUICKSTART, make_dataset, shrink_overrides
from tiframework.tracking.runlock import RunLock

GUIDE = ROOT / "experiments" / "seed_guide.yaml"

REFUSALS = cases({
    "existing run id without resume=": "train ... logging.run_id=<an earlier run>",
    "run folder held by another process": "resume=<a run folder another process has locked>",
    "--fresh on a run another process holds": "train ... logging.run_id=<locked run> --fresh",
    "runs is a file": "logging.runs_dir names a regular file",
    "runs_dir under a file": "logging.runs_dir=<a file>/runs",
    "guide config without a model": "experiments/seed_guide.yaml without model.path=",
    "YAML syntax error": "an unclosed bracket in the experiment file",
    "override error on the command line": "a good file with training.max_steps=abc",
    "embedding inspect on a folder": "embedding inspect <dir>",
    "name with a line break": "embedding.name='my<newline>char'",
})


def earlier_run(tmp: Path, run_id: str = "old") -> Path:
    """A run folder as a finished run leaves it (enough for the refusals: nothing trains)."""
    run = tmp / "runs" / "test" / run_id
    (run / "embeddings").mkdir(parents=True)
    (run / "config.yaml").write_text("embedding:\n  name: kiri_ti\n", encoding="utf-8")
    (run / "metrics.csv").write_text("step,loss,lr,vector_norm,time\n1,0.5,0.005,0.3,1.0\n", encoding="utf-8")
    for name in ("kiri_ti-2.pt", "kiri_ti-2.pt.optim", "kiri_ti.pt"):
        (run / "embeddings" / name).write_bytes(b"the earlier run's " + name.encode())
    return run


def refusal(kind: str, tmp: Path) -> tuple[list[str], str]:
    """(command-line arguments, the pattern its one line must match)."""
    train = ["train", str(QUICKSTART), *shrink_overrides(tmp)]
    if kind == "existing run id without resume=":
        run = earlier_run(tmp)
        return [*train, "logging.run_id=old"], rf"^{re.escape(str(run))}: this run id is taken .* resume=.*--fresh"
    if kind in ("run folder held by another process", "--fresh on a run another process holds"):
        run = earlier_run(tmp)
        extra = [f"resume={run}"] if kind.startswith("run folder") else ["logging.run_id=old", "--fresh"]
        return [*train, *extra], rf"^{re.escape(str(run))}: another tiframework run \(pid \d+\) is writing"
    if kind == "runs is a file":
        (tmp / "runs").write_text("not a folder", encoding="utf-8")
        return [*train, f"logging.runs_dir={tmp / 'runs'}"], rf"^{re.escape(str(tmp / 'runs'))}: is a file, not a folder"
    if kind == "runs_dir under a file":
        (tmp / "afile").write_text("not a folder", encoding="utf-8")
        return [*train, f"logging.runs_dir={tmp / 'afile' / 'runs'}"], r"afile: is a file, not a folder"
    if kind == "guide config without a model":
        return ["train", str(GUIDE), f"data.path={tmp / 'data'}"], r"seed_guide\.yaml: model: no model given; .*model\.path="
    if kind == "YAML syntax error":
        (tmp / "bad.yaml").write_text("training:\n  max_steps: [1, 2\nmodel: x\n", encoding="utf-8")
        return ["train", str(tmp / "bad.yaml")], r"bad\.yaml:3:6: not valid YAML \(expected ',' or ']'"
    if kind == "override error on the command line":
        return [*train, "training.max_steps=abc"], r"^command line: training\.max_steps: .*integer.*\(from training\.max_steps=abc\)$"
    if kind == "embedding inspect on a folder":
        (tmp / "embs").mkdir()
        (tmp / "embs" / "a.pt").write_bytes(b"x")
        return ["embedding", "inspect", str(tmp / "embs")], r"embs: is a folder, not an embedding file; give one file \(e\.g\. .*a\.pt\)"
    return [*train, "embedding.name=my\nchar"], r"embedding\.name 'my\\nchar' contains '\\n' \(a line break\)"


def run_cli(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, bool]:
    """`tiframework ARGS` in a fresh interpreter; also whether torch got imported."""
    probe = ("import sys; from tiframework.cli import main; code = main(sys.argv[1:]); "
             "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"})
    return done, "no torch" in done.stdout


@pytest.mark.parametrize("kind", REFUSALS)
def test_a_refusal_is_one_line_costs_no_torch_and_changes_nothing(tmp_path, kind):
    make_dataset(tmp_path / "data", n=2)
    args, pattern = refusal(kind, tmp_path)
    before = snapshot(tmp_path)
    lock = RunLock(tmp_path / "runs" / "test" / "old").acquire() if "another process" in kind else None
    try:
        done, light = run_cli(args, tmp_path)
    finally:
        if lock is not None:
            lock.release()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    one_line(error_line(done.stderr), pattern)
    assert light, "the refusal imported torch"
    assert_nothing_lost(tmp_path, before)
    runs = tmp_path / "runs" / "test"
    assert (sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []) == (
        ["old"] if "run" in kind and "runs" not in kind else [])  # no run folder made, none moved aside


# ------------------------------------------------------------------ dataset lint and tag statistics

LINT_CASES = cases({
    "NUL byte in a caption": "a caption holding a NUL byte (a binary or UTF-16 file)",
    "5000-word caption": "a caption of 5000 words",
    "CMYK image (lint)": "a CMYK .jpg: named as converted",
    "16-bit image (lint)": "a 16-bit greyscale .png: named as reduced to 8 bits",
    "image with transparency (lint)": "an RGBA .png: transparent pixels train as white",
    "single-colour images": "two flat images of different colours: not near-duplicates of each other",
    "NUL byte in tags stats": "`tags stats` on a caption with a NUL: escaped, not sent to the terminal",
})
LINT_EXPECTED = {
    "NUL byte in a caption": (1, r"^error +caption-nul +odd\.txt: contains 1 NUL byte"),
    "5000-word caption": (0, r"^warning +caption-long +odd\.txt: 5000 words, over 225"),
    "CMYK image (lint)": (0, r"^warning +converted-mode +odd\.jpg: CMYK, converted to RGB"),
    "16-bit image (lint)": (0, r"^warning +converted-mode +odd\.png: 16-bit, reduced to 8 bits"),
    "image with transparency (lint)": (0, r"^warning +transparency +odd\.png: has transparency"),
    "single-colour images": (0, r"^warning +single-colour +odd\.png: one flat colour"),
    "NUL byte in tags stats": (0, r"^ +1 +\d+%  b\\x00c$"),
}


def write_odd(kind: str, data: Path) -> str:
    """Add the case's odd file to a dataset; the name every expected line is about."""
    noise = Image.fromarray(np.random.default_rng(7).integers(0, 255, (300, 300, 3), dtype=np.uint8))
    if kind in ("NUL byte in a caption", "NUL byte in tags stats", "5000-word caption"):
        noise.save(data / "odd.png")
        text = "a, b\0c" if "NUL" in kind else " ".join(["word"] * 5000)
        (data / "odd.txt").write_text(text, encoding="utf-8")
        return "odd.txt"
    if kind == "CMYK image (lint)":
        noise.convert("CMYK").save(data / "odd.jpg")
        (data / "odd.txt").write_text("1girl", encoding="utf-8")
        return "odd.jpg"
    if kind == "16-bit image (lint)":
        Image.fromarray(np.asarray(noise.convert("L"), dtype=np.uint16) * 257).save(data / "odd.png")
    elif kind == "image with transparency (lint)":
        rgba = noise.convert("RGBA")
        rgba.paste((0, 0, 0, 0), (0, 0, 40, 40))  # a see-through corner (an opaque alpha channel is no finding)
        rgba.save(data / "odd.png")
    else:
        Image.new("RGB", (300, 300), "red").save(data / "odd.png")
        Image.new("RGB", (300, 300), "blue").save(data / "flat.png")
        (data / "flat.txt").write_text("1girl", encoding="utf-8")
    (data / "odd.txt").write_text("1girl", encoding="utf-8")
    return "odd.png"


@pytest.mark.parametrize("kind", LINT_CASES)
def test_lint_and_tag_stats_name_each_odd_file_once(tmp_path, kind):
    data = make_dataset(tmp_path / "data", n=2)
    name = write_odd(kind, data)
    before = snapshot(tmp_path)
    args = ["tags", "stats", str(data)] if "tags stats" in kind else ["lint", str(data)]
    done, _ = run_cli(args, tmp_path)
    code, pattern = LINT_EXPECTED[kind]
    assert done.returncode == code, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "\0" not in done.stdout
    about = [ln for ln in done.stdout.splitlines() if re.search(pattern, ln)]
    assert len(about) == 1, done.stdout[-3000:]
    if kind == "single-colour images":
        assert "near-duplicate" not in done.stdout  # red and blue are not one picture
    elif "tags stats" not in kind:
        assert len([ln for ln in done.stdout.splitlines() if f" {name}:" in ln]) == 1
    assert_nothing_lost(tmp_path, before)
