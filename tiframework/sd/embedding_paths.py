"""Where an embedding file should be, checked without torch: `embedding inspect/convert` and
`resume=` refuse a wrong path in well under a second, and a folder is named as a folder."""

from __future__ import annotations

from pathlib import Path

from tiframework.errors import UserError

# What A1111, ComfyUI and diffusers save embeddings as (`.png`: A1111's embedding-in-an-image).
EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin", ".png")


def check_embedding_path(path: Path) -> None:
    """A path that is no file is one clear line; for a folder, one of the files it holds is named."""
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in EMBEDDING_SUFFIXES)
        hint = f"e.g. {path / inside[0]}" if inside else "it holds no .pt, .safetensors, .bin or .png file"
        raise UserError(f"{path}: is a folder, not an embedding file; give one file ({hint})")
    if not path.is_file():
        raise UserError(f"{path}: embedding file not found")
