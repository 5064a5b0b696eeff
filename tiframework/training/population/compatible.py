"""Which configurations may train as one population: a check on the configs alone.

Light on purpose (no torch): a sweep worker groups its trials' runs with it before it
decides to load the training stack, and `train_population` checks its members with it.
"""

from __future__ import annotations

from collections.abc import Sequence

from tiframework.config import ExperimentConfig
from tiframework.errors import UserError

# Training keys every member must share: they decide how the one frozen model runs.
SHARED_TRAINING = ("device", "precision", "gradient_checkpointing", "compile", "offload_vae")


def member_label(index: int, cfg: ExperimentConfig) -> str:
    return f"member {index} ({cfg.logging.run_id or cfg.embedding.name})"


def check_compatible(cfgs: Sequence[ExperimentConfig]) -> None:
    """One process, one frozen model: the members must agree on the model, device and precision."""
    if not cfgs:
        raise UserError("a population needs at least one config")
    first = cfgs[0]
    model = first.model.model_dump(exclude={"clip_skip"})
    for i, cfg in enumerate(cfgs[1:], start=1):
        if cfg.model.model_dump(exclude={"clip_skip"}) != model:
            raise UserError(f"{member_label(i, cfg)}: model.* differs from member 0's; a population trains "
                            "through one frozen model (only model.clip_skip may differ): give every member "
                            "the same model settings")
        for key in SHARED_TRAINING:
            if getattr(cfg.training, key) != getattr(first.training, key):
                raise UserError(f"{member_label(i, cfg)}: training.{key} differs from member 0's; "
                                f"all members run in one process: give them the same training.{key}")
