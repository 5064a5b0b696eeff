"""The research check: the quickstart, run as a user runs it, really learns its character.

`tiframework train experiments/quickstart.yaml` on the committed toy world (seeded, CPU):
textual inversion on the held-out character `kiri` must raise the attribute classifier's
accuracy and the toy tagger's trait recall on `[name]` images well above the step-0 (init
text) baseline, and the trained embedding must beat the init-text embedding on CLIP fidelity. The measured numbers are in
tiframework/toyworld/weights/CARD.md.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runs import needs_toy_weights
from tiframework.config import load_config
from tiframework.evaluation.plateau import plateau_stop
from tiframework.evaluation.summary import curve_plateau, samples_by_step
from tiframework.tracking.runfolder import RunFolder

REPO = Path(__file__).parents[1]

# Measured (CARD.md, 2 cores), step 0 -> 200: attribute accuracy 0.265 -> 0.500, fidelity
# 0.167 -> 0.349, trait recall (toy tagger) 0.233 -> 0.483. The margins below are well under
# the measured gains (+0.23, +0.18, +0.25): float noise across thread counts moves single eval
# images, not a learned character.
MIN_ACCURACY_GAIN = 0.15
MIN_FIDELITY_GAIN = 0.08
MIN_RECALL_GAIN = 0.12


@pytest.mark.slow
@needs_toy_weights
def test_quickstart_learns_the_held_out_character(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "tiframework", "train", "experiments/quickstart.yaml",
           f"logging.runs_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    (run,) = (tmp_path / "quickstart").iterdir()
    with open(run / "eval.csv", newline="") as fh:
        rows = {int(r["step"]): r for r in csv.DictReader(fh)}
    steps = [0, 40, 80, 120, 160, 200]
    assert sorted(rows) == steps
    base, final = rows[0], rows[200]
    acc0, acc = float(base["eval/attribute_accuracy"]), float(final["eval/attribute_accuracy"])
    fid0, fid = float(base["eval/clip_fidelity"]), float(final["eval/clip_fidelity"])
    rec0, rec = float(base["eval/trait_recall"]), float(final["eval/trait_recall"])
    assert acc >= acc0 + MIN_ACCURACY_GAIN, f"attribute accuracy {acc0:.3f} -> {acc:.3f}"
    assert fid >= fid0 + MIN_FIDELITY_GAIN, f"CLIP fidelity {fid0:.3f} -> {fid:.3f}"
    assert rec >= rec0 + MIN_RECALL_GAIN, f"trait recall {rec0:.3f} -> {rec:.3f}"
    assert all(float(r["eval/clip_fidelity_se"]) > 0 and float(r["select/clip_fidelity_se"]) > 0 for r in rows.values())

    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_step"] == 200 and summary["best_step"] > 0
    assert summary["plateau_reason"] in ("plateau", "still_rising", "no_gain") and summary["plateau_noise"] > 0
    assert summary["best_score"] == float(rows[summary["best_step"]]["eval/clip_fidelity"])  # held-out
    assert sorted(p.name for p in (run / "eval_images").iterdir()) == [f"step-{s:06d}.png" for s in steps]
    assert (run / "embeddings" / "kiri_ti.pt").is_file() and (run / "embeddings" / "kiri_ti-200.safetensors").is_file()
    assert sorted(p.name for p in (run / "previews").glob("step-*-0.png")) == [
        f"step-{s:06d}-0.png" for s in steps]
    assert list((run / "wandb").glob("offline-run-*"))

    # At step 120 the curve still rises (measured: 0.167, 0.276, 0.336, 0.365 at steps 0-120, the
    # images gaining from step 80 to 120 by more than their paired noise): the plateau rule that
    # `training.stop_on_plateau` applies after each evaluation, given what a run has seen by then,
    # must not stop it there (its callback is tested on scripted curves in test_stop_on_plateau).
    folder = RunFolder(run)
    cfg = load_config(run / "config.yaml", file_relative=False).eval
    seen = [r for r in folder.read_eval() if r["step"] <= 120]
    images = {s: v for s, v in samples_by_step(folder.read_per_image()).items() if s <= 120}
    plateau = curve_plateau(seen, cfg, samples=images)
    assert plateau.paired and plateau.reason == "still_rising", plateau
    assert plateau_stop(plateau, 120, 200) is None
