"""One forward pass shared by many embeddings: the population's losses.

The frozen model is the same for every member, so K members' micro-batches can go
through it together; only the inputs and the trainable vectors are per member. What
makes a member's loss equal to its loss when training alone:

- its prompts are tokenized on their own, padded to its own micro-batch's longest chunk
  count (padding to another member's length would add EOS chunks and change its
  conditioning);
- the text encoder runs once over all members' 77-token chunks: every chunk is encoded
  independently, and each member's placeholder ids point at its own rows of the
  concatenated vectors, so its gradient reaches only its vectors;
- noise, timesteps, target and loss (with the member's own loss options) are
  `training.loss`'s, as in `TextualInversionModule`;
- the UNet runs once per group of members with the same latent shape and conditioning
  length (nothing in it mixes samples: GroupNorm and attention are per sample);
- its loss is the mean over its own samples only, so the normalisation is its own.

Batched kernels may round differently from unbatched ones, so a member's vectors match
its solo run to float32 rounding, not bit for bit (tests/training/test_population.py
states the tolerance).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from tiframework.configoptions import LossOptions
from tiframework.sd.models import SDParts
from tiframework.sd.text import encode_ids, tokenize
from tiframework.training.loss import diffusion_loss, noised

K = TypeVar("K", bound=Hashable)


@dataclass
class MemberBatch:
    """One member's micro-batch, as its data stream collated it, plus what encodes its name."""

    latents: torch.Tensor  # (B, 4, h, w)
    prompts: list[str]
    seeds: list[int]
    name: str
    vectors: torch.Tensor  # (VPT, width): the member's trainable parameter
    clip_skip: int
    options: LossOptions | None = None  # its `training.*` loss options (None: the plain MSE)
    masks: torch.Tensor | None = None  # (B, 1, h, w): latent loss masks (`training.masked_loss`)

    @classmethod
    def from_collated(cls, batch: dict[str, Any], name: str, vectors: torch.Tensor, clip_skip: int,
                      options: LossOptions | None = None) -> MemberBatch:
        """From `data.dataset.collate`'s dict."""
        return cls(batch["latents"], list(batch["prompts"]), [int(s) for s in batch["seeds"]], name, vectors,
                   clip_skip, options, batch.get("masks"))

    @property
    def size(self) -> int:
        return len(self.prompts)


def group_indices(keys: Sequence[K]) -> dict[K, list[int]]:
    """Positions of equal keys, groups in first-seen order: `[a, b, a]` -> `{a: [0, 2], b: [1]}`."""
    groups: dict[K, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


def partition(sizes: Sequence[int], max_samples: int | None) -> list[list[int]]:
    """Consecutive members per pass, at most `max_samples` samples each (a larger member goes alone).

    Each pass runs its own forward and backward, so this bounds activation memory; a
    member is never split, so its loss stays one mean.
    """
    if not max_samples:
        return [list(range(len(sizes)))] if sizes else []
    passes: list[list[int]] = []
    current: list[int] = []
    filled = 0
    for i, size in enumerate(sizes):
        if current and filled + size > max_samples:
            passes.append(current)
            current, filled = [], 0
        current.append(i)
        filled += size
    if current:
        passes.append(current)
    return passes


def encode_conditioning(parts: SDParts, batches: Sequence[MemberBatch]) -> list[torch.Tensor]:
    """Each member's `(B, chunks*77, width)` conditioning, the text encoder run once per clip skip."""
    vocab = parts.vocab_size
    out: list[torch.Tensor | None] = [None] * len(batches)
    for clip_skip, members in group_indices([b.clip_skip for b in batches]).items():
        rows, vectors, shapes, offset = [], [], [], 0
        for i in members:
            b = batches[i]
            n = int(b.vectors.shape[0])
            # Placeholder ids start at vocab + offset: this member's rows of the concatenation.
            ids = tokenize(parts.tokenizer, b.prompts, b.name, n, vocab + offset)  # (B, chunks*77)
            shapes.append(ids.shape)
            rows.append(ids.view(-1, 77))
            vectors.append(b.vectors)
            offset += n
        hidden = encode_ids(parts.text_encoder, torch.cat(rows), clip_skip, torch.cat(vectors))  # (sum chunks, 77, w)
        for i, part, shape in zip(members, hidden.split([r.shape[0] for r in rows]), shapes, strict=True):
            out[i] = part.reshape(shape[0], shape[1], -1)
    return [c for c in out if c is not None]


def member_losses(parts: SDParts, scheduler: Any, batches: Sequence[MemberBatch], device: torch.device | str,
                  unet: Callable[..., Any] | None = None) -> list[torch.Tensor]:
    """Each member's mean noise-prediction loss (a scalar), through shared text-encoder and UNet calls
    (`unet`: the UNet's call to use, e.g. compiled; default `parts.unet`)."""
    unet = unet or parts.unet
    conds = encode_conditioning(parts, batches)
    unet_dtype = next(parts.unet.parameters()).dtype
    targets = [noised(scheduler, b.latents.to(device), b.seeds, parts.prediction_type,
                      b.options.noise_offset if b.options else 0.0) for b in batches]
    losses: list[torch.Tensor | None] = [None] * len(batches)
    keys = [(tuple(x.noisy.shape[1:]), c.shape[1]) for x, c in zip(targets, conds, strict=True)]
    for members in group_indices(keys).values():
        pred = unet(torch.cat([targets[i].noisy for i in members]).to(unet_dtype),
                    torch.cat([targets[i].timesteps for i in members]),
                    torch.cat([conds[i] for i in members]).to(unet_dtype)).sample
        for i, p in zip(members, pred.split([batches[i].size for i in members]), strict=True):
            losses[i] = diffusion_loss(p, targets[i], batches[i].options, batches[i].masks)
    return [loss for loss in losses if loss is not None]
