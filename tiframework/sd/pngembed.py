"""A1111's PNG embeddings: an embedding carried inside a preview image.

A1111 ("Save images with embedding in PNG chunks") writes the embedding's dict two ways:

- a text chunk `sd-ti-embedding`: base64 of JSON, each tensor as `{"TORCHTENSOR": [[...]]}`;
- (newer releases, also when the chunk is stripped by an image host) in the pixels: the
  zlib-compressed JSON split into low and high nibbles, each laid out as a block of RGB
  pixels left and right of the picture, separated from it by one black column, with the
  nibbles XOR-ed with a fixed pseudo-random sequence (and decorative dots in the high bits).

Both are plain data (JSON), so reading them runs no code; the reader only bounds the sizes
(pixels, compressed and decompressed bytes) so a crafted image cannot exhaust memory.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tiframework.errors import UserError

TEXT_CHUNK = "sd-ti-embedding"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 64_000_000  # as the dataset reader: a few hundred MB decoded at most
MAX_JSON_BYTES = 64 << 20  # the largest embedding (75 x 1280) is ~2 MB of JSON
_LCG = (2**32, 1664525, 1013904223)  # A1111's modulus, multiplier, increment (seed 0)


def is_png(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == PNG_MAGIC


def _tensors(obj: dict[str, Any]) -> Any:
    # JSON object hook: A1111 writes each tensor as {"TORCHTENSOR": nested lists}.
    if "TORCHTENSOR" in obj:
        try:
            return torch.tensor(obj["TORCHTENSOR"], dtype=torch.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a tensor that is not a numeric array ({exc})") from None
    return obj


def _parse(path: Path, text: bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text, object_hook=_tensors)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{path}: the embedding in its {where} is not valid ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the embedding in its {where} is not a mapping")
    return data


def _lcg_low_nibbles(n: int) -> np.ndarray:
    """The first `n` values of A1111's generator, `& 0x0F` (the part that touches the data)."""
    m, a, c = _LCG
    seed, out = 0, np.empty(n, dtype=np.uint8)
    for i in range(n):
        seed = (a * seed + c) % m
        out[i] = (seed % 255) & 0x0F
    return out


def _crop_black(pixels: np.ndarray) -> np.ndarray:
    """Drop the outer rows and columns with no pixel whose channels are all non-zero."""
    lit = (pixels > 0).all(axis=2)
    cols, rows = np.flatnonzero(lit.any(axis=0)), np.flatnonzero(lit.any(axis=1))
    if not len(cols):
        return pixels[:0, :0]
    return pixels[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]


def _inflate(path: Path, blob: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(blob, MAX_JSON_BYTES)
    except zlib.error as exc:
        raise UserError(f"{path}: the embedding in its pixels is damaged ({exc})") from None
    if inflater.unconsumed_tail:
        raise UserError(f"{path}: the embedding in its pixels inflates beyond {MAX_JSON_BYTES >> 20} MB; refused")
    return out


def data_from_pixels(path: Path, image: Image.Image) -> dict[str, Any] | None:
    """The embedding hidden in the image's pixels, or None when the image carries none."""
    pixels = _crop_black(np.asarray(image.convert("RGB"), dtype=np.uint8)) & 0x0F
    black = np.flatnonzero(pixels.sum(axis=(0, 2)) == 0)  # the two separator columns (at least)
    if len(black) < 2:
        return None
    low, high = pixels[:, : black.min()], pixels[:, black.max() + 1:]
    if low.shape != high.shape or not low.size:
        return None
    noise = _lcg_low_nibbles(low.size).reshape(low.shape)
    blob = (((high ^ noise) << 4) | (low ^ noise)).astype(np.uint8).tobytes()
    return _parse(path, _inflate(path, blob), "pixels")


def read_png_embedding(path: Path) -> dict[str, Any]:
    """The embedding dict of an A1111 PNG embedding (text chunk first, then the pixels)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise UserError(f"{path}: {width}x{height} is too large to be an embedding image; refused")
            chunk = getattr(image, "text", {}).get(TEXT_CHUNK)
            if chunk is not None:
                try:
                    decoded = base64.b64decode(chunk, validate=False)
                except (binascii.Error, ValueError) as exc:
                    raise UserError(f"{path}: the '{TEXT_CHUNK}' chunk is not base64 ({exc})") from None
                return _parse(path, decoded, f"'{TEXT_CHUNK}' chunk")
            image.load()
            data = data_from_pixels(path, image)
    except UserError:
        raise
    except Exception as exc:  # PIL's decoders raise many types on damaged files
        raise UserError(f"{path}: not a readable PNG ({type(exc).__name__}: {exc})") from None
    if data is None:
        raise UserError(f"{path}: an image without an embedding (no '{TEXT_CHUNK}' chunk, no data in its pixels)")
    return data
