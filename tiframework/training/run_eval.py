"""A run's evaluation record: what each evaluation row does to the run folder and the run.

`RunEvaluation` takes the rows an `Evaluator` scores (for a solo run through
`callbacks.EvalCallback`, for each member of a population through
`population.evaluation.MemberEvaluation`) and, for each one, writes eval.csv,
eval_per_image.csv and `eval_images/`, hands the row to a sink (W&B, progress,
`on_eval`), keeps the best checkpoint's embedding, runs the fried / not-learning
diagnostics and decides whether a plateau stop is due. Both paths share it, so a
population member's evaluation files are a solo run's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tiframework.config import EvalConfig
from tiframework.evaluation.columns import FIDELITY
from tiframework.evaluation.diagnostics import is_fried, learning_verdict
from tiframework.evaluation.evaluator import Evaluator
from tiframework.evaluation.evidence import save_eval_images
from tiframework.evaluation.plateau import plateau_stop
from tiframework.evaluation.summary import append_row, best_row, curve_plateau, samples_by_step, summarize
from tiframework.tracking.runfolder import RunFolder

log = logging.getLogger(__name__)

Keep = Callable[[int], Path]  # step -> the embedding file of that step (saved if missing)


class RunEvaluation:
    """The evaluation rows of one run and what follows from them.

    `record(row, step, keep)` is called right after `evaluator.score` (or a batched
    scoring that fills the evaluator's `last_per_image` / `last_images` the same way);
    `keep(step)` is called when a checkpoint becomes the best on the selection seeds, so
    its embedding is saved even where `training.save_every` would not save it. With
    `stop_on_plateau`, `record` returns True at the evaluation that confirms the plateau.
    """

    def __init__(self, evaluator: Evaluator, folder: RunFolder, sink: Callable[[dict[str, float]], None],
                 stop_on_plateau: bool = False, planned_steps: int | None = None):
        self.evaluator, self.folder, self.sink = evaluator, folder, sink
        self.stop_on_plateau, self.planned_steps = stop_on_plateau, planned_steps
        self.rows: list[dict[str, float]] = []
        self.per_image: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.best_step: int | None = None
        self.best_embedding: Path | None = None
        self.stopped_on_plateau: dict[str, int] | None = None

    @property
    def cfg(self) -> EvalConfig:
        return self.evaluator.eval_cfg

    # --- when to evaluate -----------------------------------------------------------------

    def due_at_start(self, step: int) -> bool:
        """The first evaluation (step 0, or the resumed step unless its row was kept)."""
        return not (self.rows and self.rows[-1]["step"] == step)

    def due(self, step: int) -> bool:
        return bool(self.cfg.every) and step % self.cfg.every == 0

    def due_at_end(self, step: int) -> bool:
        """The last step, unless it was just evaluated."""
        return bool(self.rows) and self.rows[-1]["step"] != step

    # --- one evaluation -------------------------------------------------------------------

    def record(self, row: dict[str, float], step: int, keep: Keep | None = None, can_stop: bool = True) -> bool:
        """Write the row and its evidence, keep the best checkpoint, diagnose; True: stop on plateau."""
        append_row(self.rows, row)
        self.per_image += self.evaluator.last_per_image
        self.folder.write_eval(self.rows)
        self.folder.write_per_image(self.per_image)
        save_eval_images(self.evaluator.last_images, self.folder.eval_images, step)
        self.sink(row)
        self._keep_best(keep)
        self._diagnose(row, step)
        return self.stop_on_plateau and can_stop and self._plateau_stop(step)

    def _keep_best(self, keep: Keep | None) -> None:
        chosen = best_row(self.rows)
        if chosen is None or int(chosen["step"]) == self.best_step:
            return
        self.best_step = int(chosen["step"])
        if keep is not None:
            self.best_embedding = keep(self.best_step)

    def _plateau_stop(self, step: int) -> bool:
        plateau = curve_plateau(self.rows, self.cfg, samples=samples_by_step(self.per_image))
        stop = plateau_stop(plateau, step, self.planned_steps)
        if stop is None:
            return False
        self.stopped_on_plateau, saved = stop, stop["steps_saved"]
        log.info("fidelity plateaued at step %d (confirmed at %d, noise %.4f): stopping, %d planned steps saved",
                 plateau.step, step, plateau.noise, saved)
        return True

    def _diagnose(self, row: dict[str, float], step: int) -> None:
        cfg = self.cfg
        if is_fried(row["eval/fried"], cfg.fried_threshold):
            self.warn(f"eval images look fried at step {step} (score {row['eval/fried']:.2f} > "
                      f"{cfg.fried_threshold}): wrong VAE or model, or a learning rate far too high")
        base = self.rows[0].get(FIDELITY)
        if (cfg.verdict_after and step >= cfg.verdict_after and FIDELITY in row and base is not None
                and not any("not learning" in w for w in self.warnings)):
            verdict = learning_verdict(base, row[FIDELITY], cfg.verdict_margin, step)
            if verdict:
                self.warn(verdict)

    def warn(self, text: str) -> None:
        log.warning(text)
        self.warnings.append(text)

    # --- the summary ----------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Best (chosen on the selection seeds) and plateau of CLIP fidelity, every metric of the
        chosen checkpoint's row (`chosen_metrics`), its file, a plateau stop, and the warnings."""
        out = summarize(self.rows, self.cfg, samples=samples_by_step(self.per_image))
        chosen = next((r for r in self.rows if r["step"] == out.get("best_step")), None)
        if chosen is not None:
            # NaN (an SE of one image) becomes None: summary.json is JSON
            out["chosen_metrics"] = {k: (v if math.isfinite(v) else None) for k, v in chosen.items() if k != "step"}
        out["warnings"] = list(self.warnings)
        if self.best_embedding is not None and out.get("best_step") == self.best_step:
            out["best_embedding"] = str(self.best_embedding)
        out["stopped_on_plateau"] = self.stopped_on_plateau
        return out

    def continue_curve(self, rows: list[dict[str, float]], per_image: list[dict[str, Any]],
                       embeddings: Path, name: str) -> None:
        """A run resumed in its own folder: its curve goes on from the rows it kept."""
        self.rows, self.per_image = list(rows), list(per_image)
        chosen = best_row(self.rows)
        if chosen is not None:
            self.best_step = int(chosen["step"])
            found = embeddings / f"{name}-{self.best_step}.pt"
            self.best_embedding = found if found.is_file() else None
