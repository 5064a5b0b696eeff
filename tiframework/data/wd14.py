"""A local WD1.4 tagger model (SmilingWolf's wd-v1-4-*-tagger-v2): `model.onnx` + `selected_tags.csv`.

`WD14Model` runs the ONNX file with onnxruntime (CUDA when it really starts, else CPU);
`load_tag_csv` reads the tag names and categories; `preprocess` turns an image into the
model's input exactly as SmilingWolf's reference app does. `tagger` writes captions with it.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from tiframework.data.images import to_rgb
from tiframework.errors import UserError

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class TagRow:
    """One row of selected_tags.csv: the model's output at the same index."""

    name: str
    category: int


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
    # onnxruntime loads CUDA libraries on import: only when a tagger is actually opened.
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
    import onnxruntime as ort  # heavy, see _start_session

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


