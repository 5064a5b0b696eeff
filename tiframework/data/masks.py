"""Loss masks: which pixels of a training image the loss learns from (`training.masked_loss`).

A mask is the image's own alpha channel (A1111's "use PNG alpha channel as loss weight") or
a mask file beside it, `<stem><mask_suffix>` (OneTrainer's `<stem>-masklabel.png`): bright
(or opaque) = learn, black (or see-through) = ignore. It is cut exactly as the image's
pixels are (cover the bucket, centre crop) and area-averaged down to the latent grid, so a
latent pixel's weight is the share of its image pixels inside the mask. How the loss uses
it (the unmasked weight, area normalisation) is `training.loss.mask_weights`.

Masks cost a PNG decode, no VAE: they are computed per run and kept in memory (a sweep
worker's trials share them), keyed by the mask's own bytes, so editing a mask file takes
effect on the next run while the cached latents stay valid.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tiframework.data.dataset import Item
from tiframework.data.images import mask_file, mask_shape_error, read_alpha, read_image
from tiframework.data.latents import cover_crop
from tiframework.errors import UserError

log = logging.getLogger(__name__)

MASK_SOURCES = ("none", "alpha", "file", "auto")

_MEMORY: dict[tuple[str, str, tuple[int, int], tuple[int, int]], torch.Tensor | None] = {}


def _mask_image(item: Item, source: str, suffix: str) -> tuple[str, Image.Image] | None:
    """(what the mask is, its "L" image at the image's size), or None: the whole image is learned."""
    found = mask_file(item.path, suffix)
    if source in ("file", "auto") and found.is_file():
        mask = read_image(found).convert("L")
        image = read_image(item.path)
        why = mask_shape_error(found, mask.size, item.path, image.size)
        if why:
            raise UserError(why)
        return hashlib.sha256(found.read_bytes()).hexdigest(), mask.resize(image.size, Image.BILINEAR)
    if source in ("alpha", "auto"):
        alpha = read_alpha(item.path)
        if alpha is not None:
            return "alpha:" + item.digest, alpha
    return None


def latent_mask(item: Item, latent_hw: tuple[int, int], source: str, suffix: str) -> torch.Tensor | None:
    """`item`'s mask on the latent grid, (1, h, w) in [0, 1], or None (no mask: learn everything)."""
    if source == "none":
        return None
    key = (source + suffix, item.digest, item.size, tuple(latent_hw))
    if key not in _MEMORY:
        found = _mask_image(item, source, suffix)
        if found is None:
            _MEMORY[key] = None
        else:
            pixels = np.asarray(cover_crop(found[1], item.size), dtype=np.float32) / 255.0
            full = torch.from_numpy(pixels).clamp(0, 1)[None, None]  # (1, 1, H, W)
            _MEMORY[key] = F.interpolate(full, size=tuple(latent_hw), mode="area")[0]
    return _MEMORY[key]


def item_masks(items: Sequence[Item], latent_hws: Sequence[tuple[int, int]], source: str,
               suffix: str) -> list[torch.Tensor | None]:
    """Each item's latent mask (None where it has none); says how many images are masked and
    warns about masks that leave nothing to learn."""
    if source == "none":
        return [None] * len(items)
    masks = [latent_mask(it, hw, source, suffix) for it, hw in zip(items, latent_hws, strict=True)]
    found = sum(m is not None for m in masks)
    where = {"alpha": "an alpha channel", "file": f"a {suffix} file", "auto": f"a {suffix} file or alpha"}[source]
    log.info("masked loss: %d of %d images have %s; the others train on the whole image", found, len(items), where)
    if not found:
        log.warning("training.masked_loss=%s, but no image has %s: the loss is unmasked", source, where)
    empty = [it.path.name for it, m in zip(items, masks, strict=True) if m is not None and float(m.max()) == 0.0]
    if empty:
        log.warning("%d mask(s) are all black, so those images teach only at training.unmasked_weight: %s",
                    len(empty), ", ".join(empty))
    return masks
