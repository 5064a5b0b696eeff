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

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from tiframework.errors import UserError
from tiframework.fileio import atomic_write_bytes, atomic_write_text
from tiframework.images import (
    IMAGE_EXTENSIONS,
    UnreadableImage,
    caption_path,
    join_tags,
    list_images,
    read_image,
    to_rgb,
)
from tiframework.tags import tag_key

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

Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class TagRow:
    """One row of selected_tags.csv: the model's output at the same index."""

    name: str
    category: int


@dataclass(frozen=True)
class TagOptions:
    """How model outputs become a caption; defaults are the WD1.4 reference ones."""

    general_threshold: float = 0.35
    character_threshold: float = 0.85
    add_rating: bool = False
    keep_underscores: bool = False
    escape: bool = True
    sort: Literal["confidence", "alpha"] = "confidence"
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("general_threshold", "character_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{name.replace('_', '-')} must be between 0 and 1, got {value}")
        if self.sort not in ("confidence", "alpha"):
            raise UserError(f"sort must be 'confidence' or 'alpha', got {self.sort!r}")


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


# ---------------------------------------------------------------- model files


def load_tag_csv(path: str | Path) -> list[TagRow]:
    """Rows of a WD1.4 `selected_tags.csv` (columns tag_id,name,category,count)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: tags file not found (selected_tags.csv from the tagger's model repo)")
    expected = "tag_id,name,category,count"
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if not {"name", "category"} <= set(header):
                raise UserError(f"{path}: expected a WD1.4 selected_tags.csv with columns {expected}, "
                                f"found {','.join(header) or 'nothing'}")
            rows = [_parse_row(path, line, row) for line, row in enumerate(reader, start=2)]
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; is it really selected_tags.csv?") from None
    if not rows:
        raise UserError(f"{path}: no tag rows")
    return rows


def _parse_row(path: Path, line: int, row: dict[str, Any]) -> TagRow:
    name = (row.get("name") or "").strip()
    try:
        category = int(row.get("category") or "")
    except ValueError:
        raise UserError(f"{path}, line {line}: category {row.get('category')!r} is not a number") from None
    if not name:
        raise UserError(f"{path}, line {line}: empty tag name")
    return TagRow(name, category)


class WD14Model:
    """An onnxruntime session for a WD1.4-shaped model, checked on load.

    WD1.4 models take (N, S, S, 3) float32 BGR images and return (N, n_tags)
    probabilities. The shape is checked, then one blank image is run through the
    model: that proves the execution provider works and gives the output size even
    when the ONNX file declares it symbolically.
    """

    def __init__(self, model_path: str | Path, device: Device = "auto") -> None:
        self.path = Path(model_path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: model file not found (a WD1.4 model.onnx, e.g. from "
                            "SmilingWolf/wd-v1-4-convnext-tagger-v2)")
        self.session, self.provider = _start_session(self.path, device)
        self.input_name, self.size, self.fixed_batch = _check_input(self.path, self.session)
        self.n_outputs = self._probe(device)

    def _probe(self, device: Device) -> int:
        """Run one white image; falls back to CPU when CUDA starts but cannot run the model."""
        blank = np.full((1, self.size, self.size, 3), 255, np.float32)
        try:
            return self.predict(blank).shape[1]
        except UserError:
            raise
        except Exception as exc:  # onnxruntime's error types do not share a useful base
            if self.provider == "CPUExecutionProvider" or device == "cuda":
                raise UserError(f"{self.path}: the model does not run ({exc})") from None
            log.info("the model failed on CUDA (%s); running on CPU", exc)
            self.session, self.provider = _new_session(self.path, ["CPUExecutionProvider"]), "CPUExecutionProvider"
            return self._probe(device)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 -> (N, n_tags) probabilities."""
        fixed = self.fixed_batch
        if not fixed or len(batch) == fixed:
            return self._run(batch)
        # A model exported with a fixed batch size: run it in chunks of exactly that
        # size, padding the last with copies whose outputs are dropped.
        outputs = []
        for start in range(0, len(batch), fixed):
            part = batch[start : start + fixed]
            padded = np.concatenate([part, np.repeat(part[-1:], fixed - len(part), axis=0)])
            outputs.append(self._run(padded)[: len(part)])
        return np.concatenate(outputs)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: batch})[0]
        if out.ndim != 2 or out.shape[0] != len(batch):
            raise UserError(f"{self.path}: output shape {list(out.shape)} is not [batch, n_tags]; "
                            "is this a WD1.4 tagger model?")
        return out


def _start_session(path: Path, device: Device) -> tuple[Any, str]:
    """A session on CUDA when it actually starts, otherwise on CPU; and the provider used."""
    import onnxruntime as ort

    # onnxruntime-gpu lists CUDA as available even without a GPU or CUDA libraries and
    # then silently falls back, so only `get_providers()` of a real session tells.
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        # Its red "failed to load libcudnn" log is an expected outcome here; -v shows it.
        ort.set_default_logger_severity(2 if log.isEnabledFor(logging.DEBUG) else 4)
        try:
            session = _new_session(path, ["CUDAExecutionProvider", "CPUExecutionProvider"])
        finally:
            ort.set_default_logger_severity(2)  # onnxruntime's default: warnings
        if session.get_providers()[0] == "CUDAExecutionProvider":
            return session, "CUDAExecutionProvider"
        log.info("onnxruntime's CUDAExecutionProvider did not start (no GPU, or CUDA/cuDNN libraries "
                 "missing; -v shows onnxruntime's reason); running on CPU")
    if device == "cuda":
        raise UserError("--device cuda: onnxruntime's CUDAExecutionProvider did not start "
                        "(no GPU, or CUDA/cuDNN libraries missing); use --device auto or cpu")
    return _new_session(path, ["CPUExecutionProvider"]), "CPUExecutionProvider"


def _new_session(path: Path, providers: list[str]) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime's error types do not share a useful base
        raise UserError(f"{path}: not a loadable ONNX model ({exc})") from None


def _check_input(path: Path, session: Any) -> tuple[str, int, int | None]:
    inputs = session.get_inputs()
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    what = f"{path}: input {shape or [i.shape for i in inputs]} is not WD1.4-shaped"
    if len(shape) != 4 or shape[3] != 3:
        raise UserError(f"{what}: expected one (batch, height, width, 3) NHWC input")
    if not (isinstance(shape[1], int) and shape[1] == shape[2]):
        raise UserError(f"{what}: expected a fixed square image size such as [batch, 448, 448, 3]")
    if inputs[0].type != "tensor(float)":
        raise UserError(f"{what}: expected a float32 input, found {inputs[0].type}")
    if len(session.get_outputs()[0].shape) != 2:
        raise UserError(f"{path}: output {session.get_outputs()[0].shape} is not [batch, n_tags]")
    fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return inputs[0].name, shape[1], fixed


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) float32 BGR in 0..255, padded to a centred white square first."""
    image = to_rgb(image)
    width, height = image.size
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    if side != size:
        canvas = canvas.resize((size, size), Image.Resampling.BICUBIC)
    # RGB -> BGR: the tagger was trained on OpenCV-decoded images.
    return np.ascontiguousarray(np.asarray(canvas, dtype=np.float32)[:, :, ::-1])


# ---------------------------------------------------------------- the batch job


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
    from tqdm import tqdm

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
    todo: list[Path] = []
    owner: dict[Path, Path] = {}
    for image in images:
        caption = caption_path(image)
        if caption in owner:
            # a.png and a.jpg would both write a.txt; the second must not clobber the first.
            report.skipped.append((image, f"shares its caption file {caption.name} with {owner[caption].name}"))
            continue
        owner[caption] = image
        if caption.exists() and not overwrite:
            report.kept.append(image)
        else:
            todo.append(image)
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
