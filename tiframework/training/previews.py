"""Preview files of a run: `step-<step>-<k>.png` per preview prompt and `strip-<k>.png` over steps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from tiframework.fileio import atomic_path

LABEL_PAD = 14  # pixels above a labelled grid's columns (strips: the step)


def save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def grid(rows: Sequence[Sequence[Image.Image]], labels: Sequence[str] | None = None) -> Image.Image:
    """Images in a grid (rows x columns), each column optionally labelled on top."""
    w, h = rows[0][0].size
    pad = LABEL_PAD if labels else 0
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * w, pad + len(rows) * h), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(labels or []):
        draw.text((c * w + 2, 1), label, fill="black")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            canvas.paste(img.convert("RGB"), (c * w, pad + r * h))
    return canvas


def append_to_strip(path: Path, image: Image.Image, label: str) -> None:
    """Add one labelled column to the right of the strip at `path` (made if missing).

    Only the strip and the new image are read, so a preview costs the same at step 20000
    as at step 250 (rebuilding from every earlier preview would grow with the run).
    """
    cell = grid([[image]], [label])
    if path.is_file():
        with Image.open(path) as old:
            strip = old.convert("RGB")
        if strip.height == cell.height:
            grown = Image.new("RGB", (strip.width + cell.width, cell.height), "white")
            grown.paste(strip, (0, 0))
            grown.paste(cell, (strip.width, 0))
            cell = grown
    save_png(cell, path)


def rebuild_strips(folder: Path) -> None:
    """`strip-<k>.png` again from the `step-<step>-<k>.png` files there (after a resume
    moved the later ones away)."""
    steps: dict[int, list[tuple[int, Path]]] = {}
    for path in folder.glob("step-*-*.png"):
        _, step, k = path.stem.split("-")
        if step.isdigit() and k.isdigit():
            steps.setdefault(int(k), []).append((int(step), path))
    for k, found in steps.items():
        strip = folder / f"strip-{k}.png"
        strip.unlink(missing_ok=True)
        for step, path in sorted(found):
            with Image.open(path) as image:
                append_to_strip(strip, image.convert("RGB"), str(step))


def save_previews(images: list[list[Image.Image]], folder: Path, step: int) -> list[Path]:
    """`step-<step>-<k>.png` for prompt k (its seeds side by side), appended to `strip-<k>.png`."""
    paths = []
    for k, per_seed in enumerate(images):
        path = folder / f"step-{step:06d}-{k}.png"
        row = grid([per_seed])
        save_png(row, path)
        append_to_strip(folder / f"strip-{k}.png", row, str(step))
        paths.append(path)
    return paths
