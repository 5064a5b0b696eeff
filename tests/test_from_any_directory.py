"""Configs name their inputs relative to themselves or the package, so the README's commands
work from any directory: the quickstart runs (and is re-scored) from a folder outside the repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reliability import tif as forked_tif
from tiframework.config import load_config
from tiframework.configpaths import FILE_RELATIVE_KEYS

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"


def test_relative_inputs_in_a_file_resolve_from_the_file(tmp_path, monkeypatch):
    exp = tmp_path / "project" / "experiments"
    exp.mkdir(parents=True)
    (exp / "base.yaml").write_text(yaml.safe_dump({"data": {"template_file": "templates.txt"}}))
    (exp / "mine.yaml").write_text(yaml.safe_dump({
        "extends": "base.yaml",
        "model": {"path": "../models/sd15.safetensors", "preview_vae": "~/vae.pt"},
        "data": {"path": "../data/mychar", "cache_dir": ".cache/latents"},
        "eval": {"reference": "toyworld:kiri:reference", "clip_pretrained": "toyworld"},
        "logging": {"runs_dir": "runs"},
        "resume": "../runs/x/embeddings/a-2.pt",
    }))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(exp / "mine.yaml", ["data.template_file=cli.txt"])
    project = (tmp_path / "project").resolve()
    assert cfg.model.path == str(project / "models" / "sd15.safetensors")
    assert cfg.data.path == str(project / "data" / "mychar")
    assert cfg.resume == str(project / "runs" / "x" / "embeddings" / "a-2.pt")
    assert cfg.model.preview_vae == "~/vae.pt"  # home-relative: left to the reader
    assert (cfg.eval.reference, cfg.eval.clip_pretrained) == ("toyworld:kiri:reference", "toyworld")
    assert (cfg.data.cache_dir, cfg.logging.runs_dir) == (".cache/latents", "runs")  # outputs: here
    assert cfg.data.template_file == "cli.txt"  # the command line is relative to where you are
    base_only = load_config(exp / "base.yaml")
    assert base_only.data.template_file == str(project / "experiments" / "templates.txt")
    assert "resume" in FILE_RELATIVE_KEYS
    assert load_config(exp / "mine.yaml", file_relative=False).data.path == "../data/mychar"


def tif(*args: str, cwd: Path, wandb: str = "disabled") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": wandb}
    return subprocess.run([sys.executable, "-m", "tiframework", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_quickstart_runs_from_another_directory(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shrink = ["training.max_steps=2", "training.save_every=2", "eval.every=2", "eval.seeds=[0]", "eval.steps=2",
              "preview.every=0", "logging.progress_bar=false"]
    done = tif("train", str(QUICKSTART), *shrink, cwd=elsewhere, wandb="dryrun")  # W&B's old name for offline
    assert done.returncode == 0, done.stderr[-3000:]
    # quiet logs: our lines, the W&B folder once, no library INFO noise
    log = done.stderr
    assert log.count("W&B offline run: ") == 1 and "wandb sync " in log and "None" not in log
    for noise in ("INFO root", "GPU available", "LitLogger", "Loading weights", "anonymous", "LeafSpec", "wandb: "):
        assert noise not in log, noise
    [run] = (elsewhere / "runs" / "quickstart").iterdir()
    saved = load_config(run / "config.yaml", file_relative=False)
    assert saved.eval.clip_pretrained == "toyworld"  # the keyword, not a path that moves with the repo
    rows = (run / "eval.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 3  # steps 0 and 2, scored with the toy CLIP

    # Yet another directory; the entry point was just tested, so a forked process will do (reliability.tif).
    again = forked_tif("eval", str(run), "eval.seeds=[0]", "eval.steps=2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_settings"]["clip_model"] == "tif-toy-clip"
