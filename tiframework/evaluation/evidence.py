"""`eval_images/step-<NNNNNN>.png`: what each evaluation scored, small, for a person to look at.

At every evaluation, the held-out images of the first fidelity prompt (`[name]`), one row,
seeds left to right, each cell fitted within 96 px a side: evidence shown beside the numbers
in a report, not data (the scores come from the full-size images).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from tiframework.fileio import atomic_path

EVAL_IMAGE_SIDE = 96


def eval_image_row(images: Sequence[Image.Image], max_side: int = EVAL_IMAGE_SIDE) -> Image.Image:
    """The images side by side, each fitted within `max_side` (aspect kept, centred in its cell)."""
    if not images:
        raise ValueError("eval_image_row needs at least one image")
    cells = []
    for image in images:
        cell = image.convert("RGB")  # a copy: the caller's image keeps its size
        cell.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        cells.append(cell)
    width, height = max(c.width for c in cells), max(c.height for c in cells)
    row = Image.new("RGB", (width * len(cells), height), "white")
    for i, cell in enumerate(cells):
        row.paste(cell, (i * width + (width - cell.width) // 2, (height - cell.height) // 2))
    return row


def save_eval_images(images: Sequence[Image.Image], folder: Path, step: int) -> Path | None:
    """Write `folder/step-<step:06d>.png` atomically; None (nothing written) without images."""
    if not images:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:06d}.png"
    with atomic_path(path) as tmp:
        eval_image_row(images).save(tmp, format="PNG")
    return path
