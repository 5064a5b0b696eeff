"""A run's evaluation curve, summarized: best-so-far per row, best / plateau / final numbers.

Pure functions over eval rows (`{"step": 40, "eval/clip_fidelity": 0.31, ...}`), shared by
training-time evaluation and `tiframework eval`.

The best checkpoint is chosen on the *selection* seeds (`select/clip_fidelity`) and
reported on the held-out seeds (`eval/clip_fidelity`): the maximum of a noisy curve over
the same images that report it is biased upward, and more so the more checkpoints a run
has. Rows without a selection column (run folders from before it existed) fall back to
choosing on the held-out scores, and the summary says so.
"""

from __future__ import annotations

import math
from typing import Any

from tiframework.config import EvalConfig
from tiframework.evaluation.columns import FIDELITY
from tiframework.evaluation.noise import se_key
from tiframework.evaluation.plateau import Curve, Plateau, find_plateau
from tiframework.tracking.runfolder import RunFolder

SELECT = "select/clip_fidelity"
BEST = f"{FIDELITY}_best"
CHOSEN_ON_SELECTION = "selection seeds (eval.selection_seeds)"
CHOSEN_ON_HELD_OUT = "held-out seeds: no select/clip_fidelity column (run made before it), biased upward"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def best_row(rows: list[dict[str, float]]) -> dict[str, float] | None:
    """The row of the best checkpoint: highest `select/clip_fidelity` (ties: the earliest),
    or highest held-out fidelity when no row has a selection score. None without scores."""
    key = SELECT if any(_finite(r.get(SELECT)) for r in rows) else FIDELITY
    scored = [(i, r) for i, r in enumerate(rows) if _finite(r.get(key)) and _finite(r.get(FIDELITY))]
    if not scored:
        return None
    return max(scored, key=lambda ir: (ir[1][key], -ir[0]))[1]


def append_row(rows: list[dict[str, float]], row: dict[str, float]) -> None:
    """Add an eval row, with `eval/clip_fidelity_best`: the held-out fidelity of the
    checkpoint that is best on the selection seeds so far."""
    rows.append(row)
    if FIDELITY in row:
        chosen = best_row(rows)
        row[BEST] = chosen[FIDELITY] if chosen is not None else row[FIDELITY]


def eval_settings(cfg: EvalConfig, made_by: str) -> dict[str, Any]:
    """Which evaluation made a run's eval.csv: `summary.json["eval_settings"]`, so scores from
    different settings (seeds, sampler, CLIP model, reference art) are never mixed up."""
    return {"made_by": made_by, **cfg.model_dump(mode="json")}


def samples_by_step(records: list[dict[str, Any]], metric: str = FIDELITY) -> dict[int, list[float]]:
    """Per-image records ({step, prompt, seed, metric}) -> step -> values, in record order."""
    out: dict[int, list[float]] = {}
    for r in records:
        if metric in r:
            out.setdefault(int(r["step"]), []).append(float(r[metric]))
    return out


def run_curve(folder: RunFolder, metric: str = FIDELITY) -> Curve:
    """A run folder's curve of `metric` for `plateau.arm_plateau`: steps, scores, SEs (NaN in
    folders made before they were recorded) and per-image samples (None without
    `eval_per_image.csv`, or where it does not cover every evaluation alike)."""
    rows = [r for r in folder.read_eval() if _finite(r.get(metric))]
    samples = _aligned(rows, samples_by_step(folder.read_per_image(), metric))
    return Curve([r["step"] for r in rows], [r[metric] for r in rows],
                 [r.get(se_key(metric), math.nan) for r in rows], samples)


def _aligned(rows: list[dict[str, float]], by_step: dict[int, list[float]] | None) -> list[list[float]] | None:
    """Per-image samples for each row, or None unless every row has the same number of them."""
    samples = [(by_step or {}).get(int(r["step"])) for r in rows]
    if not rows or not all(samples) or len({len(v) for v in samples if v}) != 1:
        return None
    return samples  # type: ignore[return-value]


def curve_plateau(rows: list[dict[str, float]], cfg: EvalConfig, metric: str = FIDELITY,
                  samples: dict[int, list[float]] | None = None) -> Plateau | None:
    """The plateau of `metric` over the rows (None without scores), by `plateau.find_plateau`:
    paired over images when `samples` (step -> per-image values) covers every evaluation
    with the same number of images, else from each row's SE."""
    points = [r for r in rows if _finite(r.get(metric))]
    if not points:
        return None
    return find_plateau([r["step"] for r in points], [r[metric] for r in points],
                        [r.get(se_key(metric), math.nan) for r in points], samples=_aligned(points, samples),
                        z=cfg.plateau_z, patience=cfg.plateau_patience, smoothing=cfg.plateau_smoothing)


def summarize(rows: list[dict[str, float]], cfg: EvalConfig, metric: str = FIDELITY,
              samples: dict[int, list[float]] | None = None) -> dict[str, Any]:
    """The run summary's evaluation numbers (held-out unless named `_selection`):
    `best_step`, `best_score`, `best_score_selection`, `best_chosen_on`, `baseline_score`,
    `final_score`, `plateau_step`, `plateau_reason`, `plateau_noise` (+ `plateau_paired`).
    NaN becomes None (summary.json is JSON)."""
    points = [r for r in rows if _finite(r.get(metric))]
    if not points:
        return {key: None for key in ("best_step", "best_score", "best_score_selection", "baseline_score",
                                      "final_score", "plateau_step", "plateau_reason", "plateau_noise")}
    chosen = best_row(points) or points[0]
    plateau = curve_plateau(points, cfg, metric, samples)
    assert plateau is not None  # points is not empty
    out = {
        "metric": metric,
        "best_step": int(chosen["step"]),
        "best_score": chosen[metric],
        "best_score_selection": chosen.get(SELECT),
        "best_chosen_on": CHOSEN_ON_SELECTION if _finite(chosen.get(SELECT)) else CHOSEN_ON_HELD_OUT,
        "baseline_score": points[0][metric],
        "final_score": points[-1][metric],
        "plateau_step": None if plateau.step is None else int(plateau.step),
        "plateau_reason": plateau.reason,
        "plateau_noise": plateau.noise,
        "plateau_paired": plateau.paired,
    }
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in out.items()}
