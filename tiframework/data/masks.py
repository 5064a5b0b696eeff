"""Loss masks: which pixels of a training image the loss learns from (`training.masked_loss`).

A mask is the image's own alpha channel (A1111's "use PNG alpha channel as loss weight") or
a mask file beside it, `<stem><mask_suffix>` (OneTrainer's `<stem>-masklabel.png`): bright
(or opaque) = learn, black (or see-through) = ignore. It is cut exactly as the image's
pixels are (cover the bucket, centre crop) and area-averaged down to the latent grid, so a
latent pixel's weight is the share of its image pixels inside the mask. How the loss uses
it (the unmasked weight, area normalisation) is `training.loss.mask_weights`.

Masks cost a PNG decode, no VAE: they are kept in memory (a sweep worker's trials share
them), keyed by the mask file's own bytes (or the image's, for alpha), so an edited mask file
takes effect on the next run, even in the same process, while the cached latents stay valid.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tiframework.data.dataset import Item
from tiframework.data.images import mask_file, mask_shape_error, read_alpha, read_image
from tiframework.data.latents import cover_crop
from tiframework.errors import UserError

log = logging.getLogger(__name__)

# (which mask: "file:<mask sha256>" or "alpha", the image's digest, bucket, latent grid) -> mask or None
_MEMORY: dict[tuple[str, str, tuple[int, int], tuple[int, int]], torch.Tensor | None] = {}


def _mask_key(item: Item, latent_hw: tuple[int, int], source: str, suffix: str
              ) -> tuple[tuple[str, str, tuple[int, int], tuple[int, int]] | None, Path | None]:
    """The memory key of `item`'s mask and its mask file (None: the alpha channel); (None, None)
    when the source cannot give it one."""
    found = mask_file(item.path, suffix)
    if source in ("file", "auto") and found.is_file():
        which = "file:" + hashlib.sha256(found.read_bytes()).hexdigest()
        return (which, item.digest, item.size, tuple(latent_hw)), found
    if source in ("alpha", "auto"):
        return ("alpha", item.digest, item.size, tuple(latent_hw)), None
    return None, None


def _mask_image(item: Item, found: Path | None) -> Image.Image | None:
    """The mask file `found` ("L", at its image's size), or the image's alpha channel (None: no
    see-through pixel)."""
    if found is None:
        return read_alpha(item.path)
    mask = read_image(found).convert("L")
    image = read_image(item.path)
    why = mask_shape_error(found, mask.size, item.path, image.size)
    if why:
        raise UserError(why)
    return mask.resize(image.size, Image.BILINEAR)


def latent_mask(item: Item, latent_hw: tuple[int, int], source: str, suffix: str) -> torch.Tensor | None:
    """`item`'s mask on the latent grid, (1, h, w) in [0, 1], or None (no mask: learn everything)."""
    key, found = _mask_key(item, latent_hw, source, suffix) if source != "none" else (None, None)
    if key is None:
        return None
    if key not in _MEMORY:
        image = _mask_image(item, found)
        if image is None:
            _MEMORY[key] = None
        else:
            pixels = np.asarray(cover_crop(image, item.size), dtype=np.float32) / 255.0
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
