"""Reading dataset folders safely: images, their same-stem captions, tag lists.

Every module that touches a dataset (tagging, tag pruning, lint, training data)
reads through here, so a huge, truncated or zero-byte image fails the same way
everywhere: one `UnreadableImage` line naming the file, never a crash or a
multi-gigabyte allocation. The guide's "BooruDatasetTagManager crashes on absurd
resolutions" is exactly the failure the header-only size check prevents.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tiframework.errors import UserError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}

# 64 megapixels (8000 x 8000) is far beyond anything useful for 512-pixel training,
# yet a few hundred MB of RGB at most when decoded. PIL's own bomb check only
# raises at ~179 MP (2 x Image.MAX_IMAGE_PIXELS), so ours is the stricter one; a
# `max_pixels` above PIL's limit is still capped by PIL.
MAX_PIXELS = 64_000_000

# A1111's caption shuffling splits on ","; newlines are treated as separators too
# so a multi-line caption does not glue two tags together.
_TAG_SEPARATOR = re.compile(r"[,\n]")


class UnreadableImage(UserError):
    """An image file that cannot (or must not) be decoded.

    `reason` is a short machine-readable code: "zero-byte", "undecodable",
    "too-many-pixels" or "missing"; `lint` turns it into a finding code.
    """

    def __init__(self, path: Path, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.reason = reason
        self.detail = detail


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name.

    Not recursive: a dataset is one flat folder of images and captions. Symlinks
    are followed, since dataset variants are folders of links to the source images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Open `path` lazily (header only) and refuse it before any pixel is decoded."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UnreadableImage(path, "missing", "file not found (a broken link?)") from None
    if size == 0:
        raise UnreadableImage(path, "zero-byte", "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # We enforce our own, stricter limit just below; PIL's warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"{int(claimed[1]) / 1e6:.1f} megapixels" if claimed else "its size"
        raise UnreadableImage(
            path, "too-many-pixels", f"header claims {what}, over PIL's decompression-bomb limit; refused"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(path, "undecodable", f"not a readable image ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise UnreadableImage(
            path,
            "too-many-pixels",
            f"{width}x{height} is {width * height / 1e6:.1f} megapixels, over the "
            f"{max_pixels / 1e6:g} MP limit; downscale it (training uses <= 512 px anyway)",
        )
    return image


def image_size(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the file header only; raises `UnreadableImage` like `read_image`."""
    with _open_checked(Path(path), max_pixels) as image:
        return image.size


def pixel_format(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[str, bool]:
    """(PIL mode, has transparency), before `to_rgb` converts it. An alpha channel counts only
    when some pixel is see-through: a fully opaque one trains exactly as an RGB image would."""
    with _open_checked(Path(path), max_pixels) as image:
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            return image.mode, image.getchannel("A").getextrema()[0] < 255
        return image.mode, "transparency" in image.info


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `path` to an RGB image, transparency composited on white.

    The pixel count is checked from the header before decoding. EXIF orientation is
    applied so the pixels match what image viewers (and the tagger's authors) show.
    Animated images give their first frame.
    """
    path = Path(path)
    with _open_checked(path, max_pixels) as image:
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
        except Exception as exc:  # PIL decoders raise many exception types on bad input
            raise UnreadableImage(path, "undecodable", f"cannot decode image ({exc})") from None


def read_alpha(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image | None:
    """The image's alpha channel ("L", EXIF orientation applied, so it lines up with
    `read_image`'s pixels), or None when no pixel is see-through."""
    path = Path(path)
    with _open_checked(path, max_pixels) as image:
        has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
        if not has_alpha:
            return None
        try:
            image.load()
            alpha = ImageOps.exif_transpose(image).convert("RGBA").getchannel("A")
        except Exception as exc:  # PIL decoders raise many exception types on bad input
            raise UnreadableImage(path, "undecodable", f"cannot decode image ({exc})") from None
    return alpha if alpha.getextrema()[0] < 255 else None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white, as the WD1.4 tagger was trained.

    16-bit and 32-bit greyscale ("I;16", "I", "F") are scaled to 8 bits first: PIL's own
    conversion clips them at 255, which turns a 16-bit scan into a white page.
    """
    if image.mode.startswith("I") or image.mode == "F":
        image = _eight_bit_grey(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def _eight_bit_grey(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    top = 1.0 if image.mode == "F" and values.max(initial=0) <= 1.0 else 255.0
    if image.mode.startswith("I;16") or values.max(initial=0) > 255:
        top = 65535.0
    return Image.fromarray(np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8), "L")


def mask_file(image: Path, suffix: str) -> Path:
    """Where `image`'s loss-mask file is: same folder, `<stem><suffix>` (see `data.masks`)."""
    return image.with_name(image.stem + suffix)


def mask_shape_error(mask: Path, got: tuple[int, int], image: Path, want: tuple[int, int]) -> str | None:
    """Why a mask of size `got` cannot weight an image of size `want` (another aspect ratio), or None."""
    if abs(got[0] / got[1] - want[0] / want[1]) <= 0.02 * want[0] / want[1]:
        return None
    return (f"{mask}: {got[0]}x{got[1]}, but its image {image.name} is {want[0]}x{want[1]}; "
            "a mask must have its image's shape")


def mask_files_of(images: Iterable[Path], suffix: str) -> set[Path]:
    """The files among `images` that are another listed image's mask file: never trained on as images."""
    listed = set(images)
    return {mask_file(p, suffix) for p in listed} & listed


def caption_path(image_path: str | Path) -> Path:
    """The caption file of an image: same folder, same stem, `.txt` (A1111's rule)."""
    return Path(image_path).with_suffix(".txt")


def caption_owners(images: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """Images that own their caption file, and `(image, owner)` for each image whose caption
    file an earlier image already owns (a.png and a.jpg both read and write a.txt)."""
    owners: dict[Path, Path] = {}
    clashes = []
    for image in images:
        caption = caption_path(image)
        if caption in owners:
            clashes.append((image, owners[caption]))
        else:
            owners[caption] = image
    return list(owners.values()), clashes


def read_caption(image_path: str | Path) -> str | None:
    """The caption text beside `image_path`, stripped; None when there is no caption file."""
    path = caption_path(image_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        # utf-8-sig drops the byte-order mark Windows editors like to add.
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: caption is not UTF-8 text (byte {exc.start}); re-save it as UTF-8"
        ) from None


def captions_by_image(folder: str | Path) -> dict[str, str | None]:
    """`{image file name: caption text or None}` for every image of a dataset folder."""
    return {path.name: read_caption(path) for path in list_images(folder)}


def split_tags(caption: str) -> list[str]:
    """Tags of a caption: split on commas (and newlines), stripped, empties dropped."""
    return [t.strip() for t in _TAG_SEPARATOR.split(caption) if t.strip()]


def join_tags(tags: Iterable[str]) -> str:
    """The caption text for `tags`: ", "-separated, empties dropped."""
    return ", ".join(t.strip() for t in tags if t.strip())
