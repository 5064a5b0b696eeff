"""Per-vector telemetry during training (`sd.telemetry`): at each evaluation step (every
`eval.every` steps; with evaluation off, every `training.save_every`), one `vectors.csv` row per
vector in the run folder (norm, norm relative to the vocabulary's median, cosine to its init
vector, nearest tokens) and the summary scalars in W&B. At the end of a run the diagnostics
warn when the embedding is still essentially its init text (every vector's cosine to its init
above 0.99): it would prompt as the init words do. Solo runs use `TelemetryCallback`,
population members `MemberTelemetry`; both write with `TelemetryLog`.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tiframework.config import ExperimentConfig
from tiframework.sd.telemetry import STILL_INIT_COSINE, still_init, telemetry_scalars, vector_telemetry
from tiframework.training.callbacks import StepCallback

log = logging.getLogger(__name__)
FIELDS = ["step", "vector", "norm", "relative_norm", "cosine_to_init", "nearest"]


def telemetry_every(cfg: ExperimentConfig) -> int:
    return cfg.eval.every or cfg.training.save_every


@dataclass
class TelemetryLog:
    """One run's telemetry: `vectors.csv` in `folder`, scalars to `sink` (W&B)."""

    folder: Path
    name: str
    init: torch.Tensor  # (VPT, width)
    sink: Any = None
    last_still_init: bool = False
    last_step: int | None = None

    def write(self, parts, vectors: torch.Tensor, step: int) -> None:
        report = vector_telemetry(vectors, parts.text_encoder.get_input_embeddings().weight, parts.tokenizer,
                                  self.init)
        file = self.folder / "vectors.csv"
        new = not file.exists()
        with file.open("a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            for r in report:
                d = r.as_dict()
                writer.writerow({"step": step, **{k: d[k] for k in FIELDS[1:5]},
                                 "nearest": " ".join(f"{t}:{c:.3f}" for t, c in d["nearest"])})
        if self.sink is not None:
            self.sink({"step": float(step), **telemetry_scalars(report)})
        self.last_still_init, self.last_step = still_init(report), step

    def finish(self, parts, vectors: torch.Tensor, step: int) -> None:
        if step != self.last_step:
            self.write(parts, vectors, step)
        if self.last_still_init and step > 0:
            log.warning("%s: after %d steps every vector is still within cosine %.2f of its init vector: the "
                        "embedding is essentially its init text (raise the learning rate or train longer; see "
                        "vectors.csv)", self.name, step, STILL_INIT_COSINE)


class TelemetryCallback(StepCallback):
    """A solo run's telemetry at its evaluation steps and at its end."""

    def __init__(self, telemetry: TelemetryLog, every: int):
        self.telemetry, self.every = telemetry, every

    def on_step(self, trainer, module, step) -> None:
        if self.every and step % self.every == 0:
            self.telemetry.write(module.parts, module.output, step)

    def on_train_end(self, trainer, pl_module) -> None:
        self.telemetry.finish(pl_module.parts, pl_module.output, pl_module.step)
