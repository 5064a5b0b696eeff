"""Run folders written directly (config.yaml, eval.csv, summary.json, eval images), for
report tests that need known numbers rather than training. Configs are the shipped
quickstart's, resolved with the overrides, exactly as a run folder holds them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from runs import QUICKSTART
from tiframework.config import ExperimentConfig, load_config, save_config
from tiframework.tracking.runfolder import write_csv

FID, FLEX, ACC = "eval/clip_fidelity", "eval/clip_flexibility", "eval/attribute_accuracy"
SELECT = "select/clip_fidelity"


def curve_rows(level: float, seed: int, steps: tuple[int, ...] = (0, 40, 80, 120), noise: float = 0.01,
               contract: bool = True) -> list[dict[str, float]]:
    """Fidelity rising from 0.2 by `level` over the steps with seeded noise; attribute accuracy
    rising by level / 2 without noise. `contract=False`: the columns of runs made before
    selection seeds and standard errors (no `select/`, no `_se`)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, step in enumerate(steps):
        frac = i / (len(steps) - 1)
        fid = 0.2 + level * frac + (rng.normal(0, noise) if step else 0.0)
        row = {"step": step, FID: fid, FLEX: 0.25 + rng.normal(0, noise), ACC: 0.3 + level * frac / 2,
               "eval/fried": 1.0 + rng.normal(0, 0.05)}
        if contract:
            row |= {f"{FID}_se": 0.01, f"{FLEX}_se": 0.01, f"{ACC}_se": 0.02,
                    SELECT: fid + rng.normal(0, noise), f"{SELECT}_se": 0.01}
        rows.append(row)
    return rows


def contract_summary(folder: Path, rows: list[dict[str, float]]) -> dict[str, Any]:
    """The summary.json a run writes (the eval-file contract), computed from the rows."""
    key = SELECT if any(SELECT in r for r in rows) else FID
    best = max(rows, key=lambda r: (r[key], -r["step"]))
    out = {"run_dir": str(folder), "final_step": rows[-1]["step"], "stopped": None, "best_step": best["step"],
           "best_score": best[FID], "baseline_score": rows[0][FID], "final_score": rows[-1][FID],
           "plateau_step": None, "plateau_reason": "still_rising"}
    if key == SELECT:
        out["best_score_selection"] = best[SELECT]
    else:  # an old run: no selection score, no plateau reason
        out.pop("plateau_reason")
    return out


def write_folder(folder: Path, cfg: ExperimentConfig, rows: list[dict[str, float]],
                 summary: dict[str, Any] | None = None, images: bool = False) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "config.yaml")
    write_csv(folder / "eval.csv", rows)
    summary = contract_summary(folder, rows) if summary is None else summary
    (folder / "summary.json").write_text(json.dumps(summary))
    if images:
        rng = np.random.default_rng(len(str(folder)))
        (folder / "eval_images").mkdir(exist_ok=True)
        for r in rows:
            strip = rng.integers(0, 255, (32, 96, 3), dtype=np.uint8)
            Image.fromarray(strip).save(folder / "eval_images" / f"step-{int(r['step']):06d}.png")
    return summary


def write_run(folder: Path, overrides: list[str], rows: list[dict[str, float]], summary: dict[str, Any] | None = None,
              images: bool = False) -> Path:
    """A finished run of the quickstart with `overrides`; `summary` defaults to the contract's."""
    write_folder(folder, load_config(QUICKSTART, overrides), rows, summary, images)
    return folder


class FolderRunner:
    """A sweep runner (the workers' test hook) that writes a whole run folder with known scores:
    fidelity rises by 0.1 + 0.02 x VPT, noise seeded by the training seed alone, so arms with
    the same settings give identical runs seed for seed."""

    def load(self, model: Any) -> None:
        return None

    def run(self, cfg: ExperimentConfig, parts: Any, on_eval: Any) -> dict[str, Any]:
        folder = Path(cfg.logging.runs_dir) / str(cfg.logging.experiment) / str(cfg.logging.run_id)
        rows = curve_rows(0.1 + 0.02 * cfg.embedding.vectors_per_token, seed=cfg.training.seed)
        summary = write_folder(folder, cfg, rows, images=True)
        for row in rows:
            on_eval(dict(row))
        return summary
