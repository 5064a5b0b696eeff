"""A run's evaluation curve, summarized: best-so-far per row, and best / plateau steps.

Pure functions over eval rows (`{"step": 40, "eval/clip_fidelity": 0.31, ...}`), shared by
training-time evaluation and `tiframework eval`.
"""

from __future__ import annotations

import math
from typing import Any

from tiframework.config import EvalConfig
from tiframework.evaluation.metrics import FIDELITY
from tiframework.evaluation.plateau import best, find_plateau, smooth


def append_row(rows: list[dict[str, float]], row: dict[str, float]) -> None:
    """Add an eval row, with the best fidelity so far as `eval/clip_fidelity_best`."""
    if FIDELITY in row:
        row[f"{FIDELITY}_best"] = max(r.get(FIDELITY, -math.inf) for r in [*rows, row])
    rows.append(row)


def summarize(rows: list[dict[str, float]], cfg: EvalConfig, metric: str = FIDELITY) -> dict[str, Any]:
    """`best_step`, `best_score`, `plateau_step` (None when still rising) of a metric curve."""
    points = [(r["step"], r[metric]) for r in rows if metric in r and math.isfinite(r[metric])]
    if not points:
        return {"best_step": None, "best_score": None, "plateau_step": None, "baseline_score": None}
    steps, scores = [p[0] for p in points], [p[1] for p in points]
    best_step, best_score = best(steps, scores)
    plateau = find_plateau(steps, smooth(scores, steps), cfg.plateau_window, cfg.plateau_epsilon)
    return {"metric": metric, "best_step": int(best_step), "best_score": best_score,
            "plateau_step": None if plateau is None else int(plateau), "baseline_score": scores[0]}
