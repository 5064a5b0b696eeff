"""Captioned image datasets: aspect-ratio buckets, prompt templates, the seeded sample stream.

Every random choice (data order, tag shuffle and dropout, template choice, latent
sampling, noise) is a function of (seed, micro-batch number). The sampler yields
`(index, sample_seed)` pairs, so a run resumed at optimizer step N replays exactly the
micro-batches a straight run would have seen after step N.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from tiframework.config import DataConfig
from tiframework.data.images import (
    UnreadableImage,
    image_size,
    list_images,
    mask_files_of,
    read_caption,
    split_tags,
)
from tiframework.data.templates import DEFAULT_TEMPLATE as DEFAULT_TEMPLATE  # re-exported: it lives where
from tiframework.data.templates import read_templates as read_templates  # it needs no torch (preflight)
from tiframework.errors import UserError

log = logging.getLogger(__name__)

# --- pure helpers -------------------------------------------------------------------------

def bucket_size(width: int, height: int, max_side: int, step: int) -> tuple[int, int]:
    """Fit (width, height) within max_side keeping the ratio; round sides to multiples of step.

    Never upscales beyond the image's own size by more than rounding: a 2048x4096 image
    trains at 256x512 with max_side 512 and step 64.
    """
    scale = min(1.0, max_side / max(width, height))
    limit = max(step, (max_side // step) * step)

    def snap(side: float) -> int:
        return int(min(limit, max(step, int(side / step + 0.5) * step)))  # half up, not banker's

    return snap(width * scale), snap(height * scale)


def process_tags(caption: str, rng: random.Random, shuffle: bool, keep: int, dropout: float) -> str:
    """A1111's tag shuffle by ',' (first `keep` tags stay put) plus per-tag dropout."""
    tags = split_tags(caption)
    head, tail = tags[:keep], tags[keep:]
    if dropout > 0:
        tail = [t for t in tail if rng.random() >= dropout]
    if shuffle:
        rng.shuffle(tail)
    return ", ".join(head + tail)


def fill_template(template: str, name: str, filewords: str) -> str:
    text = template.replace("[name]", name).replace("[filewords]", filewords)
    # An empty [filewords] must not leave ", mychar" or "mychar, " behind.
    parts = [p.strip() for p in text.split(",")]
    return ", ".join(p for p in parts if p)


# --- images and latents -------------------------------------------------------------------

@dataclass
class Item:
    path: Path
    caption: str | None
    size: tuple[int, int]  # (width, height) of the bucket
    digest: str  # sha256 of the file bytes: the latent cache key


def scan_folder(folder: Path, max_side: int, step: int, mask_suffix: str | None = None
                ) -> tuple[list[Item], list[str]]:
    """Images with their captions and buckets; unreadable ones are listed. Another image's
    mask file (`<stem><mask_suffix>`) is not an image to train on.

    Sizes come from the file headers: pixels are decoded only when a latent is not cached.
    """
    items, skipped, uncaptioned = [], [], []
    paths = list_images(folder)
    masks = mask_files_of(paths, mask_suffix) if mask_suffix else set()
    for path in (p for p in paths if p not in masks):
        try:
            size = image_size(path)
        except UnreadableImage as exc:
            skipped.append(str(exc))
            continue
        caption = read_caption(path)  # raises UserError for non-UTF-8
        if caption is None:
            uncaptioned.append(path.name)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        items.append(Item(path, caption, bucket_size(*size, max_side, step), digest))
    for why in skipped:  # one line per image, naming it
        log.warning("skipped an unreadable image: %s", why)
    if uncaptioned:
        log.warning("%d image(s) have no caption and train with empty [filewords]: %s",
                    len(uncaptioned), ", ".join(uncaptioned))
    if not items:
        raise UserError(f"{folder}: no readable images; add .png/.jpg images with .txt captions")
    return items, skipped


# --- dataset ------------------------------------------------------------------------------

class CaptionedLatents(Dataset):
    """Items are `(index, sample_seed)` pairs; see `StreamSampler`."""

    def __init__(self, items: Sequence[Item], mean: list[torch.Tensor], std: list[torch.Tensor],
                 cfg: DataConfig, templates: list[str], name: str, seed: int,
                 masks: Sequence[torch.Tensor | None] | None = None):
        self.items, self.mean, self.std = list(items), mean, std
        self.masks = list(masks) if masks is not None else [None] * len(self.items)  # (1, h, w) loss masks
        self.cfg, self.templates, self.name = cfg, templates, name
        # `once`: one posterior sample per image, fixed for the whole run (and its resumes).
        self.once = [m + s * torch.randn(m.shape, generator=torch.Generator().manual_seed(seed * 100003 + i))
                     for i, (m, s) in enumerate(zip(mean, std, strict=True))] if cfg.latent_sampling == "once" else []

    def __len__(self) -> int:
        return len(self.items)

    def latent(self, index: int, rng: torch.Generator) -> torch.Tensor:
        method = self.cfg.latent_sampling
        if method == "deterministic":
            return self.mean[index]
        if method == "once":
            return self.once[index]
        return self.mean[index] + self.std[index] * torch.randn(self.mean[index].shape, generator=rng)

    def prompt(self, index: int, rng: random.Random) -> str:
        template = self.templates[rng.randrange(len(self.templates))]
        caption = self.items[index].caption or ""
        c = self.cfg
        return fill_template(template, self.name, process_tags(caption, rng, c.shuffle_tags, c.keep_tokens, c.tag_dropout))

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, sample_seed = key
        rng = random.Random(sample_seed)
        return {
            "latent": self.latent(index, torch.Generator().manual_seed(sample_seed)),
            "prompt": self.prompt(index, rng),
            "seed": sample_seed,
            "index": index,
            "mask": self.masks[index],
        }


def collate(batch: list[dict]) -> dict:
    """A micro-batch; `masks` (B, 1, h, w) only when some image has a loss mask (the others' are ones)."""
    latents = torch.stack([b["latent"] for b in batch])  # (B, 4, h, w)
    out = {
        "latents": latents,
        "prompts": [b["prompt"] for b in batch],
        "seeds": torch.tensor([b["seed"] for b in batch], dtype=torch.long),
        "indices": [b["index"] for b in batch],
    }
    if any(b.get("mask") is not None for b in batch):
        whole = torch.ones((1, *latents.shape[2:]))
        out["masks"] = torch.stack([whole if b.get("mask") is None else b["mask"] for b in batch])
    return out


class StreamSampler(Sampler[list[tuple[int, int]]]):
    """An endless, seeded stream of same-bucket batches, started at micro-batch `start`.

    Each pass over the data shuffles within buckets, cuts batches, and shuffles the
    batch order, all from (seed, pass). Yields `[(index, sample_seed), ...]` per batch.
    """

    def __init__(self, sizes: Sequence[tuple[int, int]], batch_size: int, seed: int, start: int, length: int):
        self.sizes, self.batch_size, self.seed = list(sizes), batch_size, seed
        self.start, self.length = start, length

    def _pass(self, n: int) -> list[list[int]]:
        rng = random.Random(self.seed * 7919 + n)
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, size in enumerate(self.sizes):
            buckets[size].append(i)
        batches = []
        for key in sorted(buckets):
            idx = buckets[key]
            rng.shuffle(idx)
            batches += [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        counter, n, emitted = 0, 0, 0
        while emitted < self.length:
            for batch in self._pass(n):
                if counter >= self.start:
                    base = (self.seed * 1_000_003 + counter) * 64
                    yield [(i, base + j) for j, i in enumerate(batch)]
                    emitted += 1
                    if emitted >= self.length:
                        return
                counter += 1
            n += 1
