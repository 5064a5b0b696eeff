"""Pickled files (`.pt`, `.bin`, `.pt.optim`) that stock A1111 loads, and A1111-era files we load.

Writing. A1111 runs every `torch.load` through its safe unpickler, which first checks the
names inside the zip: only `<dir>/data.pkl`, `<dir>/version` and `<dir>/data/<n>` pass
(newer releases also admit `<dir>/byteorder` and `<dir>/.data/serialization_id`). Current
torch also writes `.format_version` and `.storage_alignment`, so a plain `torch.save` file
is "bad file inside ..." to A1111 and silently skipped. `save_pickle` therefore writes what
`torch.save` wrote, minus every record outside the older (stricter) list: the pickle and
the tensor data are unchanged, and the data records stay 64-byte aligned as torch aligns
them, so `torch.load(mmap=True)` works. Files without `byteorder` are read as
little-endian, which is what they are on every machine that runs SD.

Reading. `load_pickle` uses torch's `weights_only` loader. A file it refuses only because
it holds A1111-era objects (the `torch.nn.ParameterDict` of torch 1.11 files, with its
sets and OrderedDicts) is read again by `A1111Unpickler`, whose allow-list is A1111's own
(never general pickle): tensors are rebuilt from the zip's raw records, and the
ParameterDict becomes an inert stand-in holding its state. Anything else that asks for a
global, such as a pickle that would call `open` or `os.system`, is refused, not run.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from tiframework.errors import UserError

# A1111's older allow-list; its newer one admits these and two more, so files that pass this
# one pass both.
ADMITTED_ENTRY = re.compile(r"^[^/]+/(data\.pkl|version|data/\d+)$")
ALIGNMENT = 64  # torch aligns tensor records so that mmap'd loads need no copy
MAX_PICKLE_BYTES = 16 << 20  # an embedding's data.pkl is a few hundred bytes
MAX_RECORD_BYTES = 64 << 20  # the largest embedding (75 x 1280 float32) is 384 KB
_FB_PADDING = 0x4246  # the extra-field id torch itself pads with ("FB")


class Refused(Exception):
    """The pickle asks for something outside the allow-list: code, not data."""


# ---------------------------------------------------------------------------- writing


def save_pickle(obj: Any, path: str | Path) -> None:
    """`torch.save(obj)` to `path`, keeping only the zip entries stock A1111 admits.

    Not atomic by itself: callers write to a temporary path (`fileio.atomic_path`).
    """
    raw = io.BytesIO()
    torch.save(obj, raw)
    with open(path, "wb") as out:
        write_admitted_zip(raw.getvalue(), out)


def write_admitted_zip(torch_zip: bytes, out: IO[bytes]) -> None:
    """Copy the admitted entries of a torch zip to `out`, stored and 64-byte aligned."""
    with zipfile.ZipFile(io.BytesIO(torch_zip)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if not ADMITTED_ENTRY.match(info.filename):
                continue
            entry = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_STORED
            # The data starts after a 30-byte local header, the name and the extra field;
            # pad the extra field so that it starts on an ALIGNMENT boundary.
            start = out.tell() + 30 + len(info.filename.encode("utf-8")) + 4
            pad = -start % ALIGNMENT
            entry.extra = struct.pack("<HH", _FB_PADDING, pad) + b"Z" * pad
            dst.writestr(entry, src.read(info))


def zip_entries(path: str | Path) -> list[str]:
    """The entry names of a zip file (empty for a legacy, non-zip pickle)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except zipfile.BadZipFile:
        return []


# ---------------------------------------------------------------------------- reading


def load_pickle(path: Path) -> Any:
    """Read a torch pickle without running code: torch's weights_only loader, then, for
    files it refuses, A1111's allow-list. UserError naming the file when neither reads it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():  # damaged, not refused
            raise UserError(f"{path}: corrupt or truncated file ({exc})") from None
    except Exception as exc:  # truncated zips, bad headers: torch raises RuntimeError/EOFError/...
        raise UserError(f"{path}: corrupt or truncated file ({type(exc).__name__})") from None
    try:
        return load_a1111_era(path)
    except Refused as exc:
        raise UserError(
            f"{path}: refused to load: the file's pickle asks for {exc} (code or objects, not just tensors; "
            "a safe embedding never does); get the file from a trusted source or as .safetensors"
        ) from None
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: corrupt or truncated file ({type(exc).__name__}: {exc})") from None


class LegacyParameterDict:
    """What a pickled torch 1.11 `ParameterDict` becomes: its saved state, inert.

    A1111 and kohya read such files through `getattr(d, '_parameters', d)`; so do we.
    """

    def __init__(self, *args: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}

    @property
    def _parameters(self) -> dict[str, Any]:
        params = self.state.get("_parameters")
        return dict(params) if isinstance(params, dict) else {}


class _StorageType:
    """`torch.FloatStorage` & co inside a persistent id: only the dtype matters."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Record:
    def __init__(self, dtype: torch.dtype, data: bytes) -> None:
        self.dtype, self.data = dtype, data


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    if not isinstance(storage, _Record):
        raise Refused("a tensor without tensor data")
    flat = torch.frombuffer(bytearray(storage.data), dtype=storage.dtype) if storage.data else \
        torch.empty(0, dtype=storage.dtype)
    return torch.as_strided(flat, tuple(size), tuple(stride), int(offset)).clone()  # bounds-checked


def _rebuild_parameter(data: Any, *_: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise Refused("a parameter that is not a tensor")
    return data  # a plain tensor: nothing here is trained


def _rebuild_from_numpy(data: Any, dtype: Any, *_: Any) -> torch.Tensor:
    if not isinstance(data, np.ndarray) or data.dtype == object:
        raise Refused("a numpy tensor that is not numeric")
    return torch.from_numpy(data.copy())


def _latin1(text: Any, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles store bytes as `_codecs.encode(str, 'latin1')`; no other codec.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused("_codecs.encode with another codec")
    return text.encode("latin1")


def _numpy_core() -> Any:
    return getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core


_STORAGES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "IntStorage": torch.int32,
             "LongStorage": torch.int64, "DoubleStorage": torch.float64, "ByteStorage": torch.uint8,
             "BFloat16Storage": torch.bfloat16}


def a1111_globals() -> dict[tuple[str, str], Any]:
    """A1111's safe-unpickler allow-list (older and newer releases together), each global
    mapped to something inert or to a checked rebuild. Left out: its two pytorch_lightning
    `ModelCheckpoint` entries, which belong to model checkpoints, never to embeddings."""
    core = _numpy_core().multiarray
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_device_tensor_from_numpy"): _rebuild_from_numpy,
        ("torch", "float32"): torch.float32,
        ("torch.nn.modules.container", "ParameterDict"): LegacyParameterDict,
        ("numpy.core.multiarray", "scalar"): core.scalar,
        ("numpy.core.multiarray", "_reconstruct"): core._reconstruct,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
        ("_codecs", "encode"): _latin1,
        ("__builtin__", "set"): set,
    }
    allowed.update({("torch", name): _StorageType(dtype) for name, dtype in _STORAGES.items()})
    return allowed


class A1111Unpickler(pickle.Unpickler):
    """An unpickler that admits A1111's globals only; tensor data comes from `records`."""

    def __init__(self, file: IO[bytes], records: dict[str, bytes]) -> None:
        super().__init__(file)
        self.records = records
        self.allowed = a1111_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise Refused(f"'{module}.{name}'")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and str(pid[2]) in self.records):
            raise Refused("storage that the file does not hold")
        return _Record(pid[1].dtype, self.records[str(pid[2])])


def load_a1111_era(path: Path) -> Any:
    """Unpickle a torch zip with A1111's allow-list (see the module docstring)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        # torch's weights_only loader refused a legacy (non-zip) pickle: nothing A1111-era is one.
        raise Refused("objects outside torch's and A1111's allow-lists") from None
    with archive:
        pickles = [i for i in archive.infolist() if re.match(r"^[^/]+/data\.pkl$", i.filename)]
        if len(pickles) != 1:
            raise UserError(f"{path}: not a torch file ({len(pickles)} data.pkl entries)")
        prefix = pickles[0].filename[: -len("data.pkl")]
        records = {}
        for info in archive.infolist():
            if info.filename.startswith(prefix + "data/") and info.filename[len(prefix) + 5:].isdigit():
                if info.file_size > MAX_RECORD_BYTES:
                    raise UserError(f"{path}: tensor record {info.filename} is {info.file_size} bytes, "
                                    "far beyond any embedding; refused")
                records[info.filename[len(prefix) + 5:]] = archive.read(info)
        if pickles[0].file_size > MAX_PICKLE_BYTES:
            raise UserError(f"{path}: its pickle is {pickles[0].file_size} bytes, far beyond any embedding")
        return A1111Unpickler(io.BytesIO(archive.read(pickles[0])), records).load()
