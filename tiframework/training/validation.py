"""The held-out validation loss (`validation.*`), after kohya's train_network validation.

Held-out images (a seeded share of data.path, or a separate folder) are scored every
`validation.every` steps at fixed timesteps (200/400/600/800 by default) with fixed noise:
the same noise for an image at every evaluation, so the curve moves only when the vectors
do. The loss is the plain float32 MSE against the model's target (not `training.loss_weighting`),
so runs trained with different weightings are scored alike. Scoring draws nothing from the
global RNG and restores it anyway (`torch.random.fork_rng`), and runs under `no_grad`: a run
with validation trains exactly the vectors it would without (tests/training/test_validation.py).

Rows go to `validation.csv` in the run folder (`step`, `val/loss`, `val/loss_t<t>` per
timestep) and to W&B; the summary gets the last and the lowest `val/loss`, and the plateau
of the loss curve by the evaluation's plateau detector (`evaluation.plateau`, on the negated
loss, paired over the fixed image x timestep scores: the same noise at every evaluation makes
them the paired samples the detector wants). With `validation.stop_on_plateau` the run stops
at the evaluation that confirms it. Solo runs use `ValidationCallback`, population members
`MemberValidation`; both score with `validation_row`.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from tiframework.config import EvalConfig, ExperimentConfig, ValidationConfig
from tiframework.data.dataset import Item, fill_template, read_templates, scan_folder
from tiframework.data.latents import Latents
from tiframework.data.sources import resolve_data_path
from tiframework.errors import UserError
from tiframework.evaluation.plateau import find_plateau, plateau_stop
from tiframework.sd.models import SDParts
from tiframework.sd.text import encode_prompts
from tiframework.training.callbacks import StepCallback

LOSS = "val/loss"


def split_items(items: list[Item], v: ValidationConfig) -> tuple[list[Item], list[Item]]:
    """(training items, held-out items): with validation on and no `validation.path`, a
    `validation.split` share (at least one image) chosen by `validation.seed` is held out."""
    if not v.every or v.path:
        return items, []
    k = max(1, round(v.split * len(items)))
    if k >= len(items):
        raise UserError(f"validation.split {v.split}: would hold out all {len(items)} images; lower it or "
                        "set validation.path to a separate folder")
    order = sorted(range(len(items)), key=lambda i: items[i].path.name)
    random.Random(v.seed).shuffle(order)
    held = set(order[:k])
    return [it for i, it in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def training_and_held_out(cfg: ExperimentConfig, items: list[Item], bucket_step: int
                          ) -> tuple[list[Item], list[Item], list[str]]:
    """The images a run trains on, the ones it validates on, and unreadable validation images."""
    v = cfg.validation
    if v.every and v.path:
        held, skipped = scan_folder(resolve_data_path(v.path, "validation.path"), cfg.data.max_side, bucket_step,
                                    cfg.training.mask_suffix)
        return items, held, skipped
    train, held = split_items(items, v)
    return train, held, []


@dataclass
class ValidationSet:
    """Held-out latents (posterior means, (4, h, w) each) and their fixed prompts."""

    latents: list[torch.Tensor]
    prompts: list[str]
    v: ValidationConfig

    @classmethod
    def build(cls, cfg: ExperimentConfig, latents: Latents) -> ValidationSet:
        # The first template, the caption as written: no shuffling or dropout, so the prompt is fixed.
        template = read_templates(cfg.data)[0]
        prompts = [fill_template(template, cfg.embedding.name, it.caption or "") for it in latents.items]
        return cls(list(latents.means), prompts, cfg.validation)


def _fixed_noise(shape: Sequence[int], seed: int, index: int) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed * 1_000_003 + index))


@torch.no_grad()
def validation_row(parts: SDParts, scheduler: Any, vectors: torch.Tensor, vset: ValidationSet, name: str,
                   clip_skip: int, step: int) -> tuple[dict[str, float], list[float]]:
    """`{"step", "val/loss", "val/loss_t<t>"...}`: each held-out image at each fixed timestep, mean MSE;
    and those image x timestep errors, in a fixed order (the plateau detector's paired samples)."""
    device = vectors.device
    unet_dtype = next(parts.unet.parameters()).dtype
    ts = list(vset.v.timesteps)
    per_t: dict[int, list[float]] = {t: [] for t in ts}
    with torch.random.fork_rng(devices=[]):
        for i, (latent, prompt) in enumerate(zip(vset.latents, vset.prompts, strict=True)):
            x0 = latent.float().to(device).expand(len(ts), *latent.shape)  # (T, 4, h, w)
            noise = _fixed_noise(latent.shape, vset.v.seed, i).to(device).expand_as(x0)
            t = torch.tensor(ts, device=device)
            target = scheduler.get_velocity(x0, noise, t) if parts.prediction_type == "v_prediction" else noise
            cond = encode_prompts(parts, [prompt] * len(ts), clip_skip, name, vectors.detach())
            pred = parts.unet(scheduler.add_noise(x0, noise, t).to(unet_dtype), t, cond.to(unet_dtype)).sample
            errors = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            for tt, e in zip(ts, errors.tolist(), strict=True):
                per_t[tt].append(e)
    row: dict[str, float] = {"step": float(step)}
    row[LOSS] = sum(sum(v) for v in per_t.values()) / sum(len(v) for v in per_t.values())
    row.update({f"{LOSS}_t{t}": sum(v) / len(v) for t, v in per_t.items()})
    return row, [e for t in ts for e in per_t[t]]


@dataclass
class ValidationRecord:
    """Where one run's validation rows go: `validation.csv`, W&B (`log`), the summary; and
    whether the loss has plateaued (`write` answers True where the run should stop: `stop_before`)."""

    folder: Path
    log: Any = None  # called with each row (W&B)
    rows: list[dict[str, float]] = field(default_factory=list)
    samples: list[list[float]] = field(default_factory=list)  # per row: its image x timestep errors
    plateau_cfg: EvalConfig | None = None  # the detector's settings (eval.plateau_*)
    stop_before: int | None = None  # validation.stop_on_plateau: stop on a plateau confirmed before this step
    stopped_on_plateau: dict[str, int] | None = None

    @classmethod
    def for_run(cls, cfg: ExperimentConfig, folder: Path, log: Any, last_step: int) -> ValidationRecord:
        """A run's record: the detector set as `eval.plateau_*`, stopping only with `validation.stop_on_plateau`
        (and never at the last step: the run ends there anyway)."""
        return cls(folder, log, plateau_cfg=cfg.eval, stop_before=last_step if cfg.validation.stop_on_plateau else None)

    def write(self, row: dict[str, float], samples: list[float] | None = None) -> bool:
        """Record one evaluation; True when the run should stop on the loss's plateau here."""
        self._append(row)
        self.samples.append(list(samples or []))
        if self.stop_before is None or self.stopped_on_plateau:
            return False
        self.stopped_on_plateau = plateau_stop(self.plateau(), int(row["step"]), self.stop_before)
        return self.stopped_on_plateau is not None

    def plateau(self):
        """The validation loss's plateau (`evaluation.plateau.Plateau`, on the negated loss), or None."""
        points = [i for i, r in enumerate(self.rows) if math.isfinite(r[LOSS])]
        if not points:
            return None
        cfg = self.plateau_cfg or EvalConfig()
        widths = {len(self.samples[i]) for i in points}
        paired = [[-e for e in self.samples[i]] for i in points] if len(widths) == 1 and 0 not in widths else None
        return find_plateau([self.rows[i]["step"] for i in points], [-self.rows[i][LOSS] for i in points],
                            samples=paired, z=cfg.plateau_z, patience=cfg.plateau_patience,
                            smoothing=cfg.plateau_smoothing)

    def _append(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        file = self.folder / "validation.csv"
        new = not file.exists()
        with file.open("a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow({k: (int(v) if k == "step" else f"{v:.6g}") for k, v in row.items()})
        if self.log is not None:
            self.log(row)

    def summary(self) -> dict[str, float]:
        if not self.rows:
            return {}
        losses = [r[LOSS] for r in self.rows if math.isfinite(r[LOSS])]
        plateau = self.plateau()
        return {"val_loss_final": self.rows[-1][LOSS], "val_loss_best": min(losses) if losses else math.nan,
                "val_plateau_step": None if plateau is None or plateau.step is None else int(plateau.step),
                "val_plateau_reason": None if plateau is None else plateau.reason,
                "val_stopped_on_plateau": self.stopped_on_plateau}


def due(every: int, step: int, last: int) -> bool:
    return bool(every) and (step % every == 0 or step == last)


class ValidationCallback(StepCallback):
    """A solo run's validation: at its start and every `validation.every` steps, and at its last step."""

    def __init__(self, vset: ValidationSet, record: ValidationRecord, last_step: int):
        self.vset, self.record, self.last_step = vset, record, last_step

    def score(self, module, step: int) -> None:
        cfg = module.cfg
        if self.record.write(*validation_row(module.parts, module.noise_scheduler, module.output, self.vset,
                                             cfg.embedding.name, cfg.model.clip_skip, step)):
            module.trainer.should_stop = True

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        if pl_module.step % self.vset.v.every == 0:
            self.score(pl_module, pl_module.step)

    def on_step(self, trainer, module, step) -> None:
        if due(self.vset.v.every, step, self.last_step):
            self.score(module, step)
