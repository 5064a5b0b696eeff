"""How the peers decide whether an embedding file loads: their deciding logic, restated.

Each function below restates, in this project's words, what a peer's own loader does with
a file, so tests can hand every file we write to "A1111", "ComfyUI" and "kohya" without
installing them (diffusers is installed and tested for real):

- A1111 `modules/safe.py` (`check_pt`): a zip may hold only `<dir>/data.pkl`, `<dir>/version`
  and `<dir>/data/<n>` (newer releases also `<dir>/byteorder` and `<dir>/.data/serialization_id`,
  the dot unescaped in its pattern), exactly one data.pkl, whose pickle may name only the
  allow-listed globals; a non-zip file is five pickles checked the same way. Then
  `modules/textual_inversion/textual_inversion.py` (`load_from_file`): the name is the file
  name (PNG: the data's `name`), the vectors come from `string_to_param` (its `_parameters`
  for a ParameterDict), SDXL pairs, or a one-tensor dict, and a width other than the model's
  puts the embedding in "skipped". Resuming (`train_embedding`): `<file>.optim` is used only
  if its `hash` equals `Embedding.checksum()` of the loaded vectors.
- A1111 `modules/textual_inversion/image_embedding.py`: the PNG encodings (writers here
  build test fixtures the way A1111 does).
- ComfyUI `comfy/sd1_clip.py` (`load_embed`): safetensors by extension, else
  `torch.load(weights_only=True)`, and if that raises, raw float32 records read straight out
  of the zip; then `string_to_param`'s first value, or the `clip_l` key, or the first value.
- kohya sd-scripts `train_textual_inversion.py` (`load_weights`): safetensors by extension,
  else `torch.load` (weights_only by default in current torch) of a dict; `string_to_param`
  (or its `_parameters`); the first value must be exactly a `torch.Tensor`.
"""

from __future__ import annotations

import base64
import collections
import copyreg
import io
import json
import pickle
import re
import types
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, PngImagePlugin

from tiframework.sd.torchfiles import write_admitted_zip

# ----------------------------------------------------------------------------- A1111 safe.py

A1111_OLDER_ENTRIES = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
# The newer list: `.data/serialization_id` with its dot unescaped, as A1111 wrote it.
A1111_NEWER_ENTRIES = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
A1111_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    *(("torch", n) for n in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage",
                             "ByteStorage", "float32", "BFloat16Storage")),
    ("torch.nn.modules.container", "ParameterDict"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode"),
    ("pytorch_lightning.callbacks", "model_checkpoint"),
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
    ("__builtin__", "set"),
}


class A1111Refused(Exception):
    """What A1111 reports as "Error verifying pickled file" (and then skips the file)."""


class _CheckingUnpickler(pickle.Unpickler):
    """Like A1111's checker: globals from the list only; storages become empty placeholders."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in A1111_GLOBALS:
            raise A1111Refused(f"global '{module}/{name}' is forbidden")
        if (module, name) == ("torch.nn.modules.container", "ParameterDict"):
            return torch.nn.ParameterDict
        if (module, name) == ("__builtin__", "set"):
            return set
        if module == "collections":
            return collections.OrderedDict
        if module.startswith("numpy"):
            core = getattr(np, "_core", None) or np.core
            return getattr(core.multiarray if "multiarray" in module else np, name)
        if module == "_codecs":
            return lambda text, enc="latin1": text.encode(enc)
        return getattr(torch._utils if module == "torch._utils" else torch, name)

    def persistent_load(self, pid: Any) -> Any:
        if pid[0] != "storage":
            raise A1111Refused("persistent id is not a storage")
        with warnings.catch_warnings():  # TypedStorage is deprecated; A1111 still makes one
            warnings.simplefilter("ignore")
            return torch.storage.TypedStorage(_internal=True)


def a1111_check(path: Path, newer: bool) -> None:
    """A1111's `check_pt`: raises A1111Refused where A1111 would refuse the file."""
    allowed = A1111_NEWER_ENTRIES if newer else A1111_OLDER_ENTRIES
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if not allowed.match(name):
                    raise A1111Refused(f"bad file inside {path}: {name}")
            pickles = [n for n in z.namelist() if re.match(r"^([^/]+)/data\.pkl$", n)]
            if len(pickles) != 1:
                raise A1111Refused(f"{len(pickles)} data.pkl found in {path}")
            try:
                _CheckingUnpickler(io.BytesIO(z.read(pickles[0]))).load()
            except A1111Refused:
                raise
            except Exception as exc:  # A1111 refuses on any exception of its checker
                raise A1111Refused(f"checker failed: {type(exc).__name__}: {exc}") from exc
    except zipfile.BadZipFile:
        with open(path, "rb") as fh:
            unpickler = _CheckingUnpickler(fh)
            try:
                for _ in range(5):
                    unpickler.load()
            except A1111Refused:
                raise
            except Exception as exc:
                raise A1111Refused(f"checker failed: {type(exc).__name__}: {exc}") from exc


def a1111_checksum(vec: torch.Tensor) -> str:
    """`Embedding.checksum()`, restated as A1111 computes it: element by element on the
    float32 tensor times 100, each truncated by int()."""
    r = 0
    for v in (vec.detach().float().reshape(-1) * 100):
        r = (r * 281 ^ int(v) * 997) & 0xFFFFFFFF
    return f"{r & 0xffff:04x}"


def a1111_torch_load(path: Path) -> Any:
    """A1111's patched `torch.load`: the check, then (as A1111 does) a plain load. Only ever
    used on files these tests wrote themselves."""
    a1111_check(path, newer=False)
    a1111_check(path, newer=True)
    return torch.load(path, map_location="cpu", weights_only=False)


def a1111_load(path: Path, model_width: int) -> dict[str, Any]:
    """A1111's `load_from_file`: {'name', 'vec', 'step', 'sd_checkpoint', 'sd_checkpoint_name',
    'skipped'} or A1111Refused / an exception where A1111 logs an error."""
    name, ext = path.stem, path.suffix.upper()
    if ext in (".PNG", ".WEBP"):
        image = Image.open(path)
        if TEXT_CHUNK in getattr(image, "text", {}):
            data = a1111_png_text_data(image.text[TEXT_CHUNK])
        else:
            data = a1111_png_pixel_data(image)
        name = data.get("name", name)
    elif ext in (".BIN", ".PT"):
        data = a1111_torch_load(path)
    elif ext == ".SAFETENSORS":
        from safetensors.torch import load_file

        data = load_file(str(path), device="cpu")
    else:
        raise ValueError(f"A1111 does not read {ext} files")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        assert len(params) == 1, "embedding file has multiple terms in it"
        vec = next(iter(params.items()))[1].detach().to(torch.float32)
    elif isinstance(data, dict) and isinstance(next(iter(data.values())), torch.Tensor):
        assert len(data) == 1, "embedding file has multiple terms in it"
        vec = next(iter(data.values()))
        vec = (vec.unsqueeze(0) if vec.ndim == 1 else vec).detach().to(torch.float32)
    else:
        raise ValueError(f"Couldn't identify {path.name} as neither textual inversion embedding nor diffuser concept.")
    return {"name": name, "vec": vec, "step": data.get("step"), "sd_checkpoint": data.get("sd_checkpoint"),
            "sd_checkpoint_name": data.get("sd_checkpoint_name"), "skipped": vec.shape[-1] != model_width}


def a1111_resume_optimizer(embedding_path: Path, vec: torch.Tensor) -> dict[str, Any] | None:
    """What A1111's training loads from `<file>.optim` for these vectors (None: "No saved optimizer")."""
    optim = embedding_path.with_name(embedding_path.name + ".optim")
    if not optim.exists():
        return None
    saved = a1111_torch_load(optim)
    return saved.get("optimizer_state_dict") if a1111_checksum(vec) == saved.get("hash") else None


# ----------------------------------------------------------------------------- A1111 PNG embeddings

TEXT_CHUNK = "sd-ti-embedding"


def _to_json(data: dict[str, Any]) -> str:
    def default(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return {"TORCHTENSOR": obj.detach().cpu().numpy().tolist()}
        raise TypeError(type(obj).__name__)

    return json.dumps(data, default=default)


def _from_json(text: bytes | str) -> dict[str, Any]:
    def hook(d: dict[str, Any]) -> Any:
        return torch.from_numpy(np.array(d["TORCHTENSOR"])) if "TORCHTENSOR" in d else d

    return json.loads(text, object_hook=hook)


def a1111_png_text_data(chunk: str) -> dict[str, Any]:
    return _from_json(base64.b64decode(chunk))


def _lcg_bytes(n: int) -> np.ndarray:
    seed, out = 0, []
    for _ in range(n):
        seed = (1664525 * seed + 1013904223) % 2**32
        out.append(seed % 255)
    return np.array(out).astype(np.uint8)


def _xor_noise(block: np.ndarray) -> np.ndarray:
    return np.bitwise_xor(block.astype(np.uint8), _lcg_bytes(block.size).reshape(block.shape) & 0x0F)


def _dots(block: np.ndarray, shades: list[int]) -> np.ndarray:
    """A1111's `style_block`: grey dots drawn into the high nibble only."""
    canvas = Image.new("RGB", (block.shape[1], block.shape[0]))
    draw = ImageDraw.Draw(canvas)
    i = 0
    for x in range(-6, canvas.size[0], 8):
        for yi, y in enumerate(range(-6, canvas.size[1], 8)):
            shift = 4 if yi % 2 == 0 else 0
            shade = int(shades[i % len(shades)])
            i += 1
            draw.ellipse((x + shift, y, x + 6 + shift, y + 6), fill=(shade, shade, shade))
    return block ^ (np.array(canvas).astype(np.uint8) & 0xF0)


def a1111_png_pixel_data(image: Image.Image) -> dict[str, Any]:
    """A1111's `extract_image_data_embed`, restated."""
    rgb = np.array(image.convert("RGB")).astype(np.uint8)
    lit = (rgb > 0).all(2)
    c0, r0 = lit.any(0).argmax(), lit.any(1).argmax()
    c1, r1 = lit.shape[1] - lit.any(0)[::-1].argmax(), lit.shape[0] - lit.any(1)[::-1].argmax()
    nibbles = rgb[r0:r1, c0:c1] & 0x0F
    black = np.where(nibbles.sum(axis=(0, 2)) == 0)[0]
    if len(black) < 2:
        raise ValueError("No Image data blocks found.")
    low, high = _xor_noise(nibbles[:, : black.min()]), _xor_noise(nibbles[:, black.max() + 1:])
    return _from_json(zlib.decompress(((high << 4) | low).flatten().tobytes()))


def a1111_png_with_pixels(picture: Image.Image, data: dict[str, Any]) -> Image.Image:
    """A1111's `insert_image_data_embed`: the data in blocks left and right of `picture`."""
    raw = np.frombuffer(zlib.compress(_to_json(data).encode(), level=9), np.uint8).copy()
    h, d = picture.size[1], 3
    size = raw.shape[0] + (h - raw.shape[0] % h)
    size = size + (h * d - size % (h * d))
    low = np.resize(raw & 0x0F, size).reshape((h, -1, d))
    high = np.resize(raw >> 4, size).reshape((h, -1, d))
    first = next(iter(data["string_to_param"].values())).detach().cpu().numpy().tolist()[0][:1024]
    shades = (np.abs(first) / np.max(np.abs(first)) * 255).astype(np.uint8)
    low, high = _xor_noise(_dots(low, list(shades))), _xor_noise(_dots(high, list(shades[::-1])))
    im_low, im_high = Image.fromarray(low, mode="RGB"), Image.fromarray(high, mode="RGB")
    out = Image.new("RGB", (picture.size[0] + im_low.size[0] + im_high.size[0] + 2, h), (0, 0, 0))
    out.paste(im_low, (0, 0))
    out.paste(picture, (im_low.size[0] + 1, 0))
    out.paste(im_high, (im_low.size[0] + 1 + picture.size[0] + 1, 0))
    return out


def a1111_png_with_text(picture: Image.Image, data: dict[str, Any]) -> tuple[Image.Image, PngImagePlugin.PngInfo]:
    info = PngImagePlugin.PngInfo()
    info.add_text(TEXT_CHUNK, base64.b64encode(_to_json(data).encode()))
    return picture, info


# ----------------------------------------------------------------------------- ComfyUI, kohya


def comfy_load_embed(path: Path, embedding_size: int, embed_key: str = "clip_l") -> torch.Tensor | None:
    """ComfyUI's `load_embed` for one file; None where ComfyUI logs "error loading embedding"."""
    try:
        if str(path).lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            embed = load_file(str(path), device="cpu")
        else:
            try:
                embed = torch.load(path, weights_only=True, map_location="cpu")
            except Exception:
                return _comfy_raw_zip(path)
    except Exception:
        return None
    if "string_to_param" in embed:
        return next(iter(embed["string_to_param"].values()))
    if embed_key in embed:
        return embed[embed_key]
    return next(iter(embed.values()))


def _comfy_raw_zip(path: Path) -> torch.Tensor | None:
    # Its fallback reads float32 records directly; only widths 768 (and 1024) are recognised.
    with zipfile.ZipFile(path) as z:
        for name in reversed([n for n in z.namelist() if "data/" in n]):
            data = z.read(name)
            count = len(data) // 4
            if count < 768:
                continue
            width = 768 if count % 768 == 0 else 1024
            return torch.frombuffer(bytearray(data), dtype=torch.float).reshape(count // width, width).clone()
    return None


def comfy_usable(vectors: torch.Tensor | None, model_width: int) -> bool:
    """ComfyUI applies an embedding only if each vector is as wide as the token table."""
    return vectors is not None and vectors.shape[-1] == model_width


def kohya_load_weights(path: Path) -> torch.Tensor:
    """kohya's `load_weights`: raises ValueError where kohya refuses the file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(str(path))
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if type(data) is not dict:
            raise ValueError(f"weight file is not dict: {path}")
        if "string_to_param" in data:
            data = data["string_to_param"]
            data = getattr(data, "_parameters", data)
    emb = next(iter(data.values()))
    if type(emb) is not torch.Tensor:
        raise ValueError(f"weight file does not contain a Tensor: {path}")
    return emb.unsqueeze(0) if emb.ndim == 1 else emb


# ----------------------------------------------------------------------------- A1111-era fixtures


class _Torch111ParameterDict:
    """Pickles as torch 1.11's `ParameterDict` did: the class, then its module state."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    @property
    def __class__(self) -> type:  # the pickler checks the class that __newobj__ names
        return torch.nn.ParameterDict


class _Torch111Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is _Torch111ParameterDict:
            return (copyreg.__newobj__, (torch.nn.ParameterDict,), obj.state)
        return NotImplemented


def write_parameterdict_era_pt(path: Path, vectors: torch.Tensor, name: str, step: int,
                               extra: dict[str, Any] | None = None) -> Path:
    """An A1111 `.pt` as torch 1.11 wrote it: `string_to_param` a pickled ParameterDict
    (OrderedDicts, a set, a Parameter), protocol 2, a zip holding only data.pkl/version/data."""
    od = collections.OrderedDict
    state = {"training": True, "_parameters": od([("*", torch.nn.Parameter(vectors.clone()))]), "_buffers": od(),
             "_non_persistent_buffers_set": set(), "_backward_hooks": od(), "_is_full_backward_hook": None,
             "_forward_hooks": od(), "_forward_pre_hooks": od(), "_state_dict_hooks": od(),
             "_load_state_dict_pre_hooks": od(), "_modules": od(), "_initialized": True}
    data = {"string_to_token": {"*": 265}, "string_to_param": _Torch111ParameterDict(state), "name": name,
            "step": step, "sd_checkpoint": "925997e9", "sd_checkpoint_name": "nai", **(extra or {})}
    raw = io.BytesIO()
    torch.save(data, raw, pickle_module=types.SimpleNamespace(Pickler=_Torch111Pickler, __name__="torch111"), pickle_protocol=2)
    with open(path, "wb") as out:
        write_admitted_zip(raw.getvalue(), out)  # torch 1.11 wrote no other records
    return path


# ----------------------------------------------------------------------------- A1111 LR schedules


def a1111_rates(text: str, max_steps: int, start: int = 0) -> list[float]:
    """The rate of each optimizer step A1111 trains, restating `LearnScheduleIterator` and
    `LearnRateScheduler` (`modules/textual_inversion/learn_schedule.py`): pairs ending at or
    before `start` are skipped, end steps are capped at max_steps, the list stops after the
    first pair ending beyond max_steps (or running to the end); before each step, a step
    counter at or past the current end moves to the next pair, and training finishes when
    there is none."""
    pairs: list[tuple[float, int]] = []
    for part in text.split(","):
        if not part.strip():
            continue
        fields = part.split(":")
        if len(fields) == 2:
            end = int(fields[1])
            if end > start:
                pairs.append((float(fields[0]), min(end, max_steps)))
                if end > max_steps:
                    break
            elif end == -1:
                pairs.append((float(fields[0]), max_steps))
                break
        else:
            pairs.append((float(fields[0]), max_steps))
            break
    if not pairs or start >= max_steps:
        return []
    rates, (rate, end), rest, step = [], pairs[0], iter(pairs[1:]), start
    while True:
        if step >= end:
            nxt = next(rest, None)
            if nxt is None:
                return rates
            rate, end = nxt
        rates.append(rate)
        step += 1
