"""Dataset lint: find the files that would crash, blur or poison training (guide step 2).

Errors are things that break training or the embedding: files that do not decode,
decompression bombs (refused from the header, before any pixel is decoded),
captions that are not UTF-8, and the embedding's own name inside a caption (the
name would then stand for a caption word, not the embedding). Warnings are things
that make it worse: images so small they get upscaled, extreme aspect ratios (the
guide's 10:1 warning), near-duplicates, missing or empty captions, two images
sharing one caption file, and transparency (training composites it on white). Mask files
(`<stem>-masklabel.png`, `training.masked_loss`) are checked as masks: readable, the image's shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import imagehash
import numpy as np

from tiframework.configoptions import MASK_SUFFIX
from tiframework.data.images import (
    MAX_PIXELS,
    UnreadableImage,
    caption_owners,
    caption_path,
    image_size,
    list_images,
    mask_file,
    mask_files_of,
    mask_shape_error,
    pixel_format,
    read_caption,
    read_image,
    split_tags,
)
from tiframework.errors import UserError
from tiframework.sd.names import check_name_text, name_pattern

# Training fits images within 512 px; a shorter side under 256 px means the image is
# upscaled more than 2x in that direction, which teaches the embedding blur.
MIN_SIDE = 256
# Beyond 4:1 a 512-px fit leaves under 128 px across: too little for the model to see
# the character. The guide's warning is at 10:1; 4:1 flags trouble earlier.
MAX_RATIO = 4.0
# Hamming distance between 64-bit perceptual hashes; <= 4 is the same picture
# re-encoded, resized or lightly edited, while unrelated images sit near 32.
HASH_DISTANCE = 4
# A caption past three of CLIP's 75-token chunks (~1 token a word for tags) dilutes the name's
# share of the prompt and multiplies the text encoder's work; a WD1.4 caption is 20-60 words.
MAX_CAPTION_WORDS = 225
# Pixel spread (0-255) under which an image is one flat colour: its perceptual hash is all
# zeros, so every flat image would "match" every other one whatever their colours.
FLAT_SPREAD = 2.0
# Modes that train as converted (correctly), but that other tools may show differently.
CONVERTED_MODES = {"CMYK": "CMYK, converted to RGB", "I;16": "16-bit, reduced to 8 bits",
                   "I;16B": "16-bit, reduced to 8 bits", "I;16L": "16-bit, reduced to 8 bits",
                   "I": "32-bit integer, reduced to 8 bits", "F": "floating-point, reduced to 8 bits"}

Severity = Literal["error", "warning"]

_UNREADABLE_CODES = {"zero-byte": "zero-byte", "too-many-pixels": "too-many-pixels"}


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str  # stable, for scripts: "zero-byte", "near-duplicate", ...
    file: str  # file name inside the dataset folder ("" for the folder itself)
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def lint_dataset(
    folder: str | Path,
    embedding_name: str | None = None,
    min_side: int = MIN_SIDE,
    max_ratio: float = MAX_RATIO,
    max_pixels: int = MAX_PIXELS,
    hash_distance: int | None = HASH_DISTANCE,
    mask_suffix: str = MASK_SUFFIX,
) -> list[Finding]:
    """All findings for the dataset `folder`, sorted by file then code.

    `hash_distance` None (or negative) turns the near-duplicate check off. An image's mask
    file (`<stem><mask_suffix>`, for `training.masked_loss`) is checked as a mask, not an image.
    """
    if embedding_name is not None:
        embedding_name = check_name_text(embedding_name, "--name")  # the rule training applies
    images, masks = dataset_images(folder, mask_suffix)
    if not images:
        return [Finding("error", "no-images", "", f"{folder}: no images to train on")]
    findings: list[Finding] = []
    hashes: dict[str, int] = {}
    for image in images:
        image_findings, phash = check_image(image, min_side, max_ratio, max_pixels)
        findings += image_findings
        if phash is not None:
            hashes[image.name] = phash
        findings += check_caption(image, embedding_name)
    findings += _shared_captions(images)
    findings += [f for image in images if (m := mask_file(image, mask_suffix)) in masks for f in check_mask(image, m)]
    if hash_distance is not None and hash_distance >= 0:
        for later, earlier, distance in near_duplicates(hashes, hash_distance):
            findings.append(Finding("warning", "near-duplicate", later,
                                    f"looks like {earlier} (hash distance {distance}); duplicates overweight one picture"))
    return sorted(findings, key=lambda f: (f.file, f.code))


def dataset_images(folder: str | Path, mask_suffix: str = MASK_SUFFIX) -> tuple[list[Path], set[Path]]:
    """The folder's images to train on, and the files among its images that are their mask files."""
    found = list_images(folder)
    masks = mask_files_of(found, mask_suffix)
    return [p for p in found if p not in masks], masks


def check_mask(image: Path, mask: Path) -> list[Finding]:
    """A mask file must decode and have its image's shape (training refuses it otherwise)."""
    try:
        got, want = image_size(mask), image_size(image)
    except UnreadableImage as exc:
        return [Finding("error", "mask-unreadable", mask.name, exc.detail)]
    why = mask_shape_error(Path(mask.name), got, image, want)
    return [Finding("error", "mask-shape", mask.name, why)] if why else []


def check_image(path: Path, min_side: int, max_ratio: float, max_pixels: int) -> tuple[list[Finding], int | None]:
    """Findings for one image file, and its 64-bit perceptual hash when it decodes."""
    try:
        image = read_image(path, max_pixels)
    except UnreadableImage as exc:
        code = _UNREADABLE_CODES.get(exc.reason, "undecodable")
        return [Finding("error", code, path.name, exc.detail)], None
    findings = _mode_findings(path, *pixel_format(path, max_pixels))
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short < min_side:
        findings.append(Finding("warning", "too-small", path.name,
                                f"{width}x{height}: shorter side under {min_side} px; it will be upscaled and blurry"))
    if long / short > max_ratio:
        findings.append(Finding("warning", "extreme-aspect", path.name,
                                f"{width}x{height} is {long / short:.1f}:1, beyond {max_ratio:g}:1; fitted to "
                                f"512 px it is only {max(1, round(512 * short / long))} px across"))
    pixels = np.asarray(image.convert("L").resize((64, 64)), dtype=np.float32)
    if float(pixels.std()) < FLAT_SPREAD:
        findings.append(Finding("warning", "single-colour", path.name,
                                "one flat colour: nothing for the embedding to learn from it"))
        return findings, None  # its hash matches every other flat image: not a duplicate check
    return findings, int(str(imagehash.phash(image)), 16)


def _mode_findings(path: Path, mode: str, had_alpha: bool) -> list[Finding]:
    """Unusual but valid pixel formats: they train correctly, but say what training sees."""
    found = []
    if mode in CONVERTED_MODES:
        found.append(Finding("warning", "converted-mode", path.name,
                             f"{CONVERTED_MODES[mode]} for training; other tools may show its colours differently"))
    if had_alpha:
        found.append(Finding("warning", "transparency", path.name,
                             "has transparency; transparent pixels train as white (as the WD1.4 tagger sees "
                             "them) unless training.masked_loss=alpha (or auto) makes alpha the loss weight"))
    return found


def check_caption(image: Path, embedding_name: str | None = None) -> list[Finding]:
    """Findings for the caption file of `image`."""
    name = caption_path(image).name
    try:
        text = read_caption(image)
    except UserError as exc:
        return [Finding("error", "caption-not-utf8", name, str(exc).split(": ", 1)[-1])]
    if text is None:
        return [Finding("warning", "caption-missing", image.name,
                        f"no caption {name}; the image trains on the template alone")]
    if "\0" in text:
        return [Finding("error", "caption-nul", name, f"contains {text.count(chr(0))} NUL byte(s), a sign of a "
                        "binary or UTF-16 file; re-save it as plain UTF-8 text")]
    if not split_tags(text):
        return [Finding("warning", "caption-empty", name, "caption has no tags")]
    words = len(text.split())
    if words > MAX_CAPTION_WORDS:
        return [Finding("warning", "caption-long", name, f"{words} words, over {MAX_CAPTION_WORDS}; the name "
                        "drowns in it (captions are tags, e.g. 20-60 from the WD1.4 tagger); shorten it")]
    if embedding_name and name_pattern(embedding_name.strip()).search(text):
        return [Finding("error", "name-in-caption", name,
                        f"contains the embedding name {embedding_name!r}; remove it, or the name will mean "
                        "this caption word instead of the embedding")]
    return []


def near_duplicates(hashes: dict[str, int], max_distance: int) -> list[tuple[str, str, int]]:
    """(later, earlier, distance) for every image whose hash is within `max_distance`
    of an earlier one's; each image is reported once, against its closest match."""
    names = list(hashes)
    values = np.array([hashes[n] for n in names], dtype=np.uint64)
    found = []
    for i in range(1, len(names)):
        differing = (values[:i] ^ values[i]).view(np.uint8)  # (i * 8,) bytes
        # popcount via unpackbits: np.bitwise_count needs numpy 2, we support 1.26
        distances = np.unpackbits(differing).reshape(i, 64).sum(axis=1)  # (i,)
        j = int(np.argmin(distances))
        if distances[j] <= max_distance:
            found.append((names[i], names[j], int(distances[j])))
    return found


def _shared_captions(images: list[Path]) -> list[Finding]:
    """a.png and a.jpg both read a.txt: one of them surely has the wrong caption."""
    return [Finding("warning", "shared-caption", image.name,
                    f"shares caption {caption_path(image).name} with {owner.name}; rename one")
            for image, owner in caption_owners(images)[1]]


def exit_code(findings: list[Finding]) -> int:
    """1 when any finding is an error, else 0 (warnings alone pass)."""
    return int(any(f.severity == "error" for f in findings))


def format_findings(findings: list[Finding], n_images: int) -> str:
    """Human-readable lines and a summary line."""
    lines = [f"{f.severity:<7} {f.code:<16} {f.file}: {f.message}" for f in findings]
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    lines.append(f"{n_images} images: {errors} error(s), {warnings} warning(s)")
    return "\n".join(lines)
