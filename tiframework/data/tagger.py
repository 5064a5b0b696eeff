"""Caption images with a local WD1.4 tagger (SmilingWolf's wd-v1-4-*-tagger-v2 ONNX models).

This is the guide's step 3 ("tag your images using WD1.4's tagger") without the web
UI: `model.onnx` + `selected_tags.csv` from the model's Hugging Face repo, run with
onnxruntime. Preprocessing follows SmilingWolf's reference app: transparency on
white, pad to a centred white square, resize (bicubic) to the model's input side,
RGB -> BGR (the models were trained on OpenCV-loaded images), float32 in 0..255,
NHWC. Tag formatting follows A1111's WD14 tagger extension: spaces instead of
underscores except kaomoji, brackets escaped with a backslash.

Captions are `<stem>.txt` beside each image, written atomically. An existing
caption is never replaced unless asked, and then it is backed up first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator
from tqdm import tqdm

from tiframework.config import Section
from tiframework.data.images import (
    IMAGE_EXTENSIONS,
    UnreadableImage,
    caption_owners,
    caption_path,
    join_tags,
    list_images,
    read_image,
)
from tiframework.data.tags import tag_key
from tiframework.data.wd14 import Device, TagRow, WD14Model, load_tag_csv, preprocess
from tiframework.errors import UserError
from tiframework.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

# Tags whose underscores are part of the face, not word separators. This is the
# list shipped as the default "excludes" of A1111's WD14 tagger extension
# (toriato/stable-diffusion-webui-wd14-tagger, "kaomoji from WD 1.4 tagger csv"),
# which SmilingWolf's own demo app uses too.
KAOMOJI = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<",
    "3_3", "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
})  # fmt: skip

# selected_tags.csv categories.
RATING, GENERAL, CHARACTER = 9, 0, 4

# A1111's prompt syntax gives ( ) and \ meaning (attention, escapes); deepbooru and
# the WD14 extension escape exactly these.
_ESCAPE = re.compile(r"([\\()])")

class TagOptions(Section):
    """How model outputs become a caption; defaults are the WD1.4 reference ones.

    The `tag` command's options are built from these fields (`cli.options`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    general_threshold: float = Field(0.35, description="minimum confidence for general tags (0 to 1)")
    character_threshold: float = Field(0.85, description="minimum confidence for character tags (0 to 1)")
    add_rating: bool = Field(False, description="start each caption with the top rating tag (general, sensitive, ...)")
    keep_underscores: bool = Field(
        False, description="keep danbooru underscores (long_hair); default writes spaces, except in kaomoji")
    escape: bool = Field(
        True, description="escape ( ) and \\ with a backslash, as A1111 prompts need")
    sort: Literal["confidence", "alpha"] = Field(
        "confidence", description="tag order in a caption: most confident first, or alphabetical")
    exclude: tuple[str, ...] = Field((), description="tags never to write; spaces or underscores both match")

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        # UserError, not pydantic's ValidationError: a bad option is one line naming it.
        if isinstance(data, dict):
            for name in ("general_threshold", "character_threshold"):
                value = data.get(name)
                if value is not None and not 0.0 <= float(value) <= 1.0:
                    raise UserError(f"{name.replace('_', '-')} must be between 0 and 1, got {value}")
            if data.get("sort", "confidence") not in ("confidence", "alpha"):
                raise UserError(f"sort must be 'confidence' or 'alpha', got {data['sort']!r}")
        return data


@dataclass
class TagReport:
    """What `tag_folder` did, file by file."""

    provider: str
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # existing captions left alone
    unchanged: list[Path] = field(default_factory=list)  # overwrite asked, same caption
    backups: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (image, why)


# ---------------------------------------------------------------- pure tag processing


def format_tag(name: str, keep_underscores: bool = False, escape: bool = True) -> str:
    """A tag as it goes into a caption: `long_hair` -> `long hair`, `(cosplay)` -> `\\(cosplay\\)`."""
    if not keep_underscores and name not in KAOMOJI:
        name = name.replace("_", " ")
    if escape:
        name = _ESCAPE.sub(r"\\\1", name)
    return name


def select_tags(probs: Sequence[float] | np.ndarray, rows: Sequence[TagRow], options: TagOptions) -> list[str]:
    """The caption tags for one image's model outputs (`probs[i]` belongs to `rows[i]`)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(rows),):
        raise ValueError(f"{probs.shape[0]} outputs for {len(rows)} tags")
    categories = np.array([r.category for r in rows])
    # Anything that is neither rating nor character (e.g. v3 models' meta tags) is general.
    thresholds = np.where(categories == CHARACTER, options.character_threshold, options.general_threshold)
    candidates = np.flatnonzero((categories != RATING) & (probs >= thresholds))
    if options.sort == "alpha":
        order = sorted(candidates, key=lambda i: (_formatted(rows[i], options).lower(), int(i)))
    else:
        order = sorted(candidates, key=lambda i: (-probs[i], rows[i].name))
    excluded = {tag_key(t) for t in options.exclude}
    tags: list[str] = []
    if options.add_rating:
        ratings = np.flatnonzero(categories == RATING)
        if ratings.size:
            # Ratings are mutually exclusive classes: the top one, whatever its score.
            order = [int(ratings[np.argmax(probs[ratings])]), *order]
    for i in order:
        tag = _formatted(rows[i], options)
        # Formatting can merge two names ("a_b" and "a b"); keep the first, most confident.
        if tag_key(rows[i].name) not in excluded and tag not in tags:
            tags.append(tag)
    return tags


def _formatted(row: TagRow, options: TagOptions) -> str:
    return format_tag(row.name, options.keep_underscores, options.escape)


def tag_folder(
    folder: str | Path,
    model_path: str | Path,
    tags_csv: str | Path,
    options: TagOptions | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    device: Device = "auto",
    progress: bool | None = None,
) -> TagReport:
    """Write a WD1.4 caption `<stem>.txt` beside every image in `folder`.

    All inputs (folder, CSV, model) are validated before any caption is written.
    Images that already have a caption are left alone unless `overwrite`; an
    overwritten caption is backed up to `<stem>.txt.bak` (then `.bak.1`, ...).
    Unreadable images are listed in the report and skipped. `progress`: show a
    progress bar (None: only on a terminal).
    """
    options = options or TagOptions()
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    images = list_images(folder)
    if not images:
        raise UserError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    rows = load_tag_csv(tags_csv)
    model = WD14Model(model_path, device)
    if model.n_outputs != len(rows):
        raise UserError(f"{tags_csv} has {len(rows)} tags but {model_path} outputs {model.n_outputs}; "
                        "use the selected_tags.csv from the same model repo")
    report = TagReport(provider=model.provider)
    todo = _plan(images, overwrite, report)
    log.info("tagging %d images with %s on %s", len(todo), model.path.name, model.provider)
    with tqdm(total=len(todo), unit="img", desc="tagging", disable=None if progress is None else not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            paths, arrays = _read_batch(chunk, model.size, report)
            if paths:
                probs = model.predict(np.stack(arrays))
                for path, p in zip(paths, probs, strict=True):
                    _write_caption(path, join_tags(select_tags(p, rows, options)), report)
            bar.update(len(chunk))
    return report


def _plan(images: list[Path], overwrite: bool, report: TagReport) -> list[Path]:
    """Images to run: those without a caption (all, when overwriting), one per caption file."""
    owners, clashes = caption_owners(images)
    for image, owner in clashes:
        # a.png and a.jpg would both write a.txt; the second must not clobber the first.
        report.skipped.append((image, f"shares its caption file {caption_path(image).name} with {owner.name}"))
    todo = [image for image in owners if overwrite or not caption_path(image).exists()]
    report.kept += [image for image in owners if image not in todo]
    return todo


def _read_batch(paths: list[Path], size: int, report: TagReport) -> tuple[list[Path], list[np.ndarray]]:
    ok: list[Path] = []
    arrays: list[np.ndarray] = []
    for path in paths:
        try:
            arrays.append(preprocess(read_image(path), size))
        except UnreadableImage as exc:
            report.skipped.append((path, exc.detail))
            continue
        ok.append(path)
    return ok, arrays


def _write_caption(image: Path, text: str, report: TagReport) -> None:
    caption = caption_path(image)
    if caption.exists():
        old = caption.read_bytes()
        if old == text.encode("utf-8"):
            report.unchanged.append(image)
            return
        backup = _backup_path(caption)
        atomic_write_bytes(backup, old)
        report.backups.append(backup)
    # No trailing newline: A1111 pastes the file's text into the prompt verbatim.
    atomic_write_text(caption, text)
    report.written.append(image)


def _backup_path(caption: Path) -> Path:
    """`a.txt.bak`, or the first free `a.txt.bak.N`: an older backup is never clobbered."""
    candidate = caption.with_name(caption.name + ".bak")
    n = 1
    while candidate.exists():
        candidate = caption.with_name(f"{caption.name}.bak.{n}")
        n += 1
    return candidate
