"""Where a run came from: `provenance.json` in every run folder (and in the W&B config).

A curve is only comparable to another when both ran the same code on the same data with
the same model, so each run records: tiframework's version and git commit (with a dirty
flag: uncommitted changes mean the commit alone does not name the code), the versions of
the packages that decide the numbers, the device, the command line, and content hashes of
the dataset (image and caption bytes) and of the model file(s). `compare` reads these to
warn when arms ran different code and to refuse pooling seeds trained on different data.
"""

from __future__ import annotations

import hashlib
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from tiframework import __version__
from tiframework.config import ExperimentConfig
from tiframework.data.images import caption_path, list_images

# The packages whose versions change what a run computes (or how it is read back).
PACKAGES = ("torch", "diffusers", "transformers", "open_clip_torch", "pytorch-lightning", "numpy", "pillow",
            "safetensors", "torchvision", "onnxruntime-gpu", "wandb", "optuna")
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root when installed from a clone
FILE = "provenance.json"


def git_state(root: Path = CHECKOUT) -> dict[str, Any]:
    """`{"git_commit": sha, "git_dirty": bool}` of the checkout this code runs from; both None
    when it is not a git checkout (a wheel, an sdist) or git is not installed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        # An installed copy may sit inside some other repository: only our own checkout counts.
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return {"git_commit": None, "git_dirty": None}
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def code_version() -> dict[str, Any]:
    """tiframework's version, commit and dirty flag: what `compare` checks across arms."""
    return {"tiframework": __version__, **git_state()}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions from package metadata (nothing is imported); None when missing."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def hash_files(files: list[tuple[str, Path]]) -> str:
    """sha256 over (name, size, bytes) of each file, in the order given."""
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(f"{name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def dataset_hash(folder: Path) -> str:
    """The training images and their captions, by content (file names sorted; other files ignored)."""
    files: list[tuple[str, Path]] = []
    for image in sorted(list_images(folder), key=lambda p: p.name):
        files.append((image.name, image))
        caption = caption_path(image)
        if caption.is_file():
            files.append((caption.name, caption))
    return hash_files(files)


def model_hash(source: str, file_sha256: str | None, preset_dir: Path | None = None) -> str:
    """`sha256:<hex>` of a model file (the plain file hash, as model sites list it), a content hash
    of a diffusers folder, or `preset:<name>` for a random preset (with the hash of its shipped
    weights when it has some: `preset_dir`, the toy world). `source` is `SDParts.source`."""
    if file_sha256:
        return f"sha256:{file_sha256}"
    if source.startswith("preset:"):
        return source if preset_dir is None else f"{source}:{folder_hash(preset_dir)}"
    return folder_hash(Path(source))


def folder_hash(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return hash_files([(str(p.relative_to(folder)), p) for p in files])


def collect(cfg: ExperimentConfig, data_dir: Path, device: str, model: str) -> dict[str, Any]:
    """The run's provenance; `model` is `model_hash(...)`, `device` the resolved device in words.
    Hashing reads every training image and the model file once (a few seconds for GBs)."""
    return {
        "code": code_version(),
        "packages": package_versions(),
        "device": device,
        "platform": platform.platform(),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
        "cwd": str(Path.cwd()),
        "dataset": {"path": str(data_dir), "hash": dataset_hash(data_dir)},
        "model": {"source": cfg.model.path or f"preset:{cfg.model.preset}", "hash": model},
    }
