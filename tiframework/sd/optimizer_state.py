"""The optimizer state beside an embedding: `<file>.optim`, written and checked as A1111 does.

A1111 saves `{'hash': <checksum of the vectors>, 'optimizer_state_dict': ...}` next to each
embedding and, when training resumes, reuses the state only if the hash matches the
embedding it resumes (otherwise "No saved optimizer exists in checkpoint"). We write the
same two keys (plus `step`), so A1111 resumes with our AdamW moments and we with its; a
state whose hash does not match is ignored with a warning, never applied to other vectors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from tiframework.errors import UserError
from tiframework.fileio import atomic_path
from tiframework.sd.torchfiles import load_pickle, save_pickle

log = logging.getLogger(__name__)


def a1111_checksum(vectors: torch.Tensor) -> str:
    """A1111's `Embedding.checksum()`: a 16-bit rolling hash of the vectors x 100, 4 hex digits.

    Each value is scaled by 100 in float32 (as A1111 multiplies its float32 tensor) and
    truncated toward zero; the hash folds them in order as r = (r * 281) XOR (v * 997),
    kept to 32 bits.
    """
    scaled = (vectors.detach().to("cpu", torch.float32).reshape(-1) * 100).tolist()
    r = 0
    for v in scaled:
        r = ((r * 281) ^ (int(v) * 997)) & 0xFFFFFFFF
    return f"{r & 0xFFFF:04x}"


def optim_path(embedding: Path) -> Path:
    return embedding.with_name(embedding.name + ".optim")


def save_optimizer_state(embedding: Path, vectors: torch.Tensor, state: dict[str, Any], step: int,
                         trained: torch.Tensor | None = None) -> Path:
    """Write `<embedding>.optim` atomically; return its path. `trained`: the vectors the optimizer
    trains when they are not the saved ones (the embedding holds their EMA), kept so a resume
    goes on exactly; A1111 reads only the two keys it knows."""
    path = optim_path(embedding)
    data = {"hash": a1111_checksum(vectors), "optimizer_state_dict": state, "step": int(step)}
    if trained is not None:
        data["trained_vectors"] = trained.detach().float().cpu().clone()
    with atomic_path(path) as tmp:
        save_pickle(data, tmp)
    return path


def load_optimizer_state(embedding: Path, vectors: torch.Tensor, step: int) -> dict[str, Any] | None:
    """The saved optimizer state for these vectors, or None (with a warning saying why).

    Matching: A1111's `hash` of the vectors; a file of ours from before the hash existed
    matches by its `step`. A damaged or malicious file is a UserError naming it.
    """
    return load_training_state(embedding, vectors, step)[0]


def load_training_state(embedding: Path, vectors: torch.Tensor, step: int
                        ) -> tuple[dict[str, Any] | None, torch.Tensor | None]:
    """`load_optimizer_state`'s state, and the trained vectors saved beside an EMA embedding
    (None when the embedding's vectors are the trained ones, or the state does not match)."""
    path = optim_path(embedding)
    if not path.is_file():
        log.warning("%s: no optimizer state beside the embedding; AdamW restarts from zero moments", embedding)
        return None, None
    data = load_pickle(path)
    state = data.get("optimizer_state_dict") if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not an optimizer state file (no 'optimizer_state_dict'); move it away")
    saved, ours = data.get("hash"), a1111_checksum(vectors)
    trained = data.get("trained_vectors")
    if trained is not None and (not isinstance(trained, torch.Tensor) or trained.shape != vectors.shape):
        raise UserError(f"{path}: 'trained_vectors' is not a {tuple(vectors.shape)} tensor; move the file away")
    if saved is None and data.get("step") == step:
        return state, trained
    if saved != ours:
        found = f"hash {saved}" if saved is not None else f"step {data.get('step')}"
        log.warning("%s: belongs to other vectors (%s; the embedding's is %s at step %d); AdamW restarts "
                    "from zero moments", path, found, ours, step)
        return None, None
    return state, trained
