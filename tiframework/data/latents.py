"""Training latents: images through the frozen VAE once, cached in memory and on disk.

The posterior mean and std of each image's latent are keyed by the image's content, the
VAE's weights and the bucket size, so a second run (or a sweep's next trial) skips encoding.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from tiframework.data.dataset import Item
from tiframework.data.images import UnreadableImage, read_image
from tiframework.errors import UserError
from tiframework.fileio import atomic_path
from tiframework.sd.models import move

log = logging.getLogger(__name__)


def cover_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`img` resized to cover `size` (width, height), then centre-cropped to it (a mask is cut the same way)."""
    w, h = size
    scale = max(w / img.width, h / img.height)
    resized = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.LANCZOS)
    left, top = (resized.width - w) // 2, (resized.height - h) // 2
    return resized.crop((left, top, left + w, top + h))


def load_pixels(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) in [-1, 1]: resized to cover the bucket, then centre-cropped."""
    arr = np.asarray(cover_crop(read_image(path), size), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, dict[torch.dtype, str]] = weakref.WeakKeyDictionary()


def module_fingerprint(module: torch.nn.Module) -> str:
    """A content hash of a module's weights (the latent cache is keyed by the VAE).

    Remembered per frozen module and dtype: a sweep worker's trials share one VAE, and
    hashing SD's 84M VAE weights (copied off the GPU) on every trial is wasted time.
    """
    dtype = next(module.parameters()).dtype
    known = _FINGERPRINTS.setdefault(module, {})
    if dtype not in known:
        digest = hashlib.sha256()
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        known[dtype] = digest.hexdigest()[:16]
    return known[dtype]


# --- latent cache -------------------------------------------------------------------------

_MEMORY: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


@dataclass
class Latents:
    """The encoded dataset: `items[i]` has latent posterior `means[i]`, `stds[i]` (4, h, w)."""

    items: list[Item]
    means: list[torch.Tensor]
    stds: list[torch.Tensor]
    skipped: list[str]  # images whose pixels could not be decoded, with the reason


def _encode(vae: torch.nn.Module, pixels: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (4, h, w), float32 on the CPU.

    A float16 VAE can overflow to NaN/Inf on some images (A1111's "NaNs in VAE"); such an
    image is encoded again in float32 rather than poisoning the training latents.
    """
    dist = vae.encode(pixels).latent_dist
    mean, std = (dist.mean[0] * scale).float().cpu(), (dist.std[0] * scale).float().cpu()
    if pixels.dtype == torch.float16 and not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        log.warning("the float16 VAE overflowed on an image; encoding it in float32")
        move(vae, pixels.device, torch.float32)
        try:
            return _encode(vae, pixels.float(), scale)
        finally:
            move(vae, pixels.device, torch.float16)
    return mean, std


@torch.no_grad()
def encode_latents(items: Sequence[Item], vae: torch.nn.Module, cache_dir: str | None,
                   progress: bool = True) -> Latents:
    """Posterior mean and std of each image's latent, already multiplied by the VAE's scaling factor.

    Encoded once by the frozen VAE and cached in memory (a sweep worker reuses them
    across trials) and on disk, keyed by image content, VAE weights and bucket size,
    so a second run skips encoding (and decoding). An image whose header was fine but
    whose pixels do not decode (a truncated download) is skipped with a warning.
    """
    fingerprint = module_fingerprint(vae)
    scale = float(vae.config.scaling_factor)
    folder = Path(cache_dir) if cache_dir else None
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    out = Latents([], [], [], [])
    for item in tqdm(items, desc="caching latents", unit="img", disable=not progress, leave=False):
        key = f"{fingerprint}-{item.digest[:32]}-{item.size[0]}x{item.size[1]}"
        path = folder / f"{key}.safetensors" if folder else None
        if key not in _MEMORY:
            if path is not None and path.is_file():
                stored = load_file(str(path))
                _MEMORY[key] = (stored["mean"], stored["std"])
            else:
                try:
                    pixels = load_pixels(item.path, item.size)[None].to(device, dtype)
                except UnreadableImage as exc:
                    out.skipped.append(str(exc))
                    continue
                mean, std = _encode(vae, pixels, scale)
                _MEMORY[key] = (mean, std)
                if path is not None:
                    with atomic_path(path) as tmp:
                        # bytes written by Python: a full disk is an OSError naming the file
                        tmp.write_bytes(save({"mean": mean.contiguous(), "std": std.contiguous()}))
        mean, std = _MEMORY[key]
        out.items.append(item)
        out.means.append(mean)
        out.stds.append(std)
    for why in out.skipped:  # one line per image, naming it
        log.warning("skipped an image whose pixels do not decode: %s", why)
    if not out.items:
        raise UserError(f"{items[0].path.parent if items else 'data.path'}: no readable images; "
                        "add .png/.jpg images with .txt captions")
    return out
