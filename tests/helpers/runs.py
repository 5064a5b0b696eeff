"""Configs for test runs: the shipped quickstart, shrunk to the tiny preset and a few CPU steps.

Tests build the real experiment file and override only what makes it small, so a change to
`experiments/quickstart.yaml` that breaks training breaks these tests too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiframework.config import ExperimentConfig, load_config
from tiframework.sd.models import TOYWORLD_DIR

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
TOY_WEIGHTS = TOYWORLD_DIR  # the committed toy world, where the `toyworld` preset loads it from
needs_toy_weights = pytest.mark.skipif(not (TOY_WEIGHTS / "model_index.json").is_file(), reason="toy weights not built")
CAPTION = "1girl, solo, red hair, smile, simple background"
# Eval settings for the tiny preset: the tiny random CLIP, one seed, two sampling steps, no tagger
# (the generated dataset is no pruned variant, so it has no traits to recall).
TINY_EVAL = ["eval.clip_model=tif-tiny-clip", "eval.clip_pretrained=null", "eval.steps=2", "eval.seeds=[0]",
             "eval.prompts=[\"[name]\"]", "eval.flexibility_prompts=[\"[name], from behind\"]",
             "eval.tagger=null", "eval.trait_leak=[]"]


def make_dataset(folder: Path, n: int = 6, caption: str | None = CAPTION) -> Path:
    """`n` random-noise images in three aspect ratios (three buckets), with captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = [(64, 64), (64, 96), (96, 64)][i % 3]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
        if caption is not None:
            (folder / f"{i:02d}.txt").write_text(caption, encoding="utf-8")
    return folder


def make_masked_dataset(folder: Path, n: int = 6) -> Path:
    """`make_dataset`, with loss masks: even images get a transparent left half (alpha), odd ones a
    `-masklabel.png` file whose bottom half is black."""
    make_dataset(folder, n)
    for i in range(n):
        path = folder / f"{i:02d}.png"
        pixels = np.asarray(Image.open(path).convert("RGBA")).copy()
        h, w = pixels.shape[:2]
        if i % 2 == 0:
            pixels[:, : w // 2, 3] = 0
            Image.fromarray(pixels, "RGBA").save(path)
        else:
            mask = np.full((h, w), 255, dtype=np.uint8)
            mask[h // 2 :] = 0
            Image.fromarray(mask, "L").save(folder / f"{i:02d}-masklabel.png")
    return folder


def shrink_overrides(tmp_path: Path) -> list[str]:
    """The overrides that shrink the quickstart (see `shrunk_quickstart`); for command lines too."""
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data)
    return [
        "model.preset=tiny", f"data.path={data}", "data.max_side=32", f"data.cache_dir={tmp_path / 'cache'}",
        "training.batch_size=1", "training.max_steps=4", "training.save_every=0", "preview.every=0",
        "eval.every=0", *TINY_EVAL,
        "logging.wandb=false", "logging.progress_bar=false", f"logging.runs_dir={tmp_path / 'runs'}",
        "logging.experiment=test",
    ]


def shrunk_quickstart(tmp_path: Path, *overrides: str) -> ExperimentConfig:
    """The quickstart on the tiny preset: a generated dataset under `tmp_path`, fitted within
    32 px (the tiny preset's native size: at the quickstart's 64 px its training step costs 5
    times as much, 193 vs 36 ms on one thread), batch 1, no saves, previews or evaluation
    unless the overrides ask, runs under `tmp_path/runs/test/`."""
    return load_config(QUICKSTART, shrink_overrides(tmp_path) + list(overrides))
