"""Textual-inversion embeddings: creation from init text, and the files users take away.

An `Embedding` is a name plus `(n_vectors, width)` float32 vectors and the training step
they reached. Three file formats, told apart by content on load (never trusted from
the extension alone):

- `a1111-pt`: AUTOMATIC1111's `.pt`, a pickled dict
  `{'string_to_token': {'*': 265}, 'string_to_param': {'*': (n, 768)}, 'name', 'step',
  'sd_checkpoint', 'sd_checkpoint_name'}`. diffusers reads it too.
- `a1111-safetensors`: `{'emb_params': (n, 768)}` (what A1111 and kohya read) with
  name/step/checkpoint as safetensors metadata strings.
- `diffusers`: `{token: (n, 768)}` as `save_textual_inversion` writes and
  `load_textual_inversion` reads (`.safetensors`, or a pickled `.bin`/`.pt`). A
  pickled one has room for nothing else, so it keeps only the name and vectors.

Pickles are written so that stock A1111's safe unpickler admits them and read without
running code (`sd.torchfiles`: torch's weights_only loader, then A1111's allow-list for
A1111-era files); A1111's PNG embeddings are read too (`sd.pngembed`). Every write goes
through `atomic_path`, so a crash or an error leaves either the old file or none, never
half of one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
from safetensors import safe_open
from safetensors.torch import save

from tiframework.config import EmbeddingConfig, EmbeddingFormat
from tiframework.errors import UserError
from tiframework.fileio import atomic_path
from tiframework.sd.embedding_paths import check_embedding_path
from tiframework.sd.names import check_name_text, name_pattern, tokenizer_view
from tiframework.sd.pngembed import is_png, read_png_embedding
from tiframework.sd.text import prompt_token_ids
from tiframework.sd.torchfiles import load_pickle, save_pickle

FORMATS: tuple[str, ...] = get_args(EmbeddingFormat)
SUFFIX_FORMATS = {".pt": "a1111-pt", ".safetensors": "a1111-safetensors", ".bin": "diffusers"}
A1111_TOKEN = 265  # A1111 writes this placeholder id into every .pt; readers ignore it
MODEL_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 1280: "SDXL (OpenCLIP bigG)", 2048: "SDXL",
                  64: "the toy world (model.preset toyworld)", 32: "the tiny test preset"}


@dataclass(eq=False)  # tensors have no single truth value; compare `vectors` with torch.equal
class Embedding:
    """A trained (or freshly initialised) embedding: `name` in prompts -> `vectors`."""

    name: str
    vectors: torch.Tensor  # (n_vectors, width) float32
    step: int = 0
    sd_checkpoint: str | None = None  # A1111's short hash of the model it was trained on
    sd_checkpoint_name: str | None = None
    file_format: str | None = None  # the format it was loaded from; None when made in memory

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise ValueError(f"embedding vectors must be (n_vectors, width), got shape {tuple(self.vectors.shape)}")

    @property
    def n_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def width(self) -> int:
        return int(self.vectors.shape[1])


def vector_norms(vectors: torch.Tensor) -> list[float]:
    """Per-vector L2 norm of embedding vectors (n_vectors, width): the "strength" A1111 users
    inspect; a norm far above the vocabulary's (~0.4 for SD 1.x) is a fried embedding."""
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2:
        raise ValueError(f"expected (n_vectors, dim) vectors, got shape {tuple(vectors.shape)}")
    return vectors.detach().float().norm(dim=1).tolist()


def family(width: int) -> str:
    """The model family a token width belongs to, for messages."""
    return MODEL_FAMILIES.get(width, "an unrecognised model")


# ---------------------------------------------------------------------------- creation


def check_name(name: str, tokenizer: Any, captions: Mapping[str, str | None] | None = None,
               what: str = "embedding name") -> str:
    """The cleaned name, or a UserError when files or prompts could not tell it apart.

    The characters and length follow `names.check_name_text` (one rule everywhere). A name
    that is already one vocabulary word (`miku`, also when written `ｍｉｋｕ`: the tokenizer
    reads what ftfy and NFKC make of it) or a word of the dataset's captions (`1girl`) would
    replace that word everywhere: the guide's "don't name it 1girl". `captions` maps file
    names to caption text; a caption "contains" the name exactly where training would splice
    the embedding in (`names.name_pattern`).
    """
    seen = tokenizer_view(name.strip())
    if seen and _is_vocab_word(seen, tokenizer):
        raise UserError(f"{what} {name.strip()!r} is already a word in CLIP's vocabulary ({seen!r}), so prompts "
                        f"that mean the word would get the embedding; pick a made-up name such as '{seen}_ti'")
    clean = check_name_text(name, what)
    hits = [file for file, text in (captions or {}).items() if text and name_pattern(clean).search(text)]
    if hits:
        more = f" and {len(hits) - 3} more" if len(hits) > 3 else ""
        raise UserError(f"{what} {clean!r} is a word of the dataset's captions ({', '.join(hits[:3])}{more}); "
                        "every caption with that word would train the embedding; pick another name")
    return clean


def _is_vocab_word(name: str, tokenizer: Any) -> bool:
    # CLIP lowercases, and a whole word is one token ending in "</w>" ("miku" -> "miku</w>").
    ids = tokenizer(name, add_special_tokens=False, verbose=False).input_ids
    if len(ids) != 1:
        return False
    token = tokenizer.convert_ids_to_tokens(ids[0])
    return token.endswith("</w>") and token[: -len("</w>")] == name.lower()


def init_vectors(token_rows: torch.Tensor, vectors_per_token: int, width: int) -> torch.Tensor:
    """(vectors_per_token, width) from (n_tokens, width) init-token rows, as A1111 fills them.

    A1111's `create_embedding`: `vec[i] = embedded[i * n_tokens // vpt]`, so with fewer
    tokens than vectors each token fills a consecutive block (2 tokens, VPT 4 -> AABB).
    No tokens gives zeros.
    """
    n_tokens = int(token_rows.shape[0])
    if n_tokens == 0:
        return torch.zeros(vectors_per_token, width, dtype=torch.float32)
    index = torch.tensor([i * n_tokens // vectors_per_token for i in range(vectors_per_token)])
    return token_rows[index].detach().to(torch.float32).clone()


def start_vectors(spec: EmbeddingConfig, table: torch.Tensor, text_vectors: torch.Tensor, seed: int) -> torch.Tensor:
    """`embedding.init`: the init text's vectors (A1111), N(0, vocabulary std) drawn from `seed`, or zeros."""
    if spec.init == "zeros":
        return torch.zeros_like(text_vectors)
    if spec.init == "random":
        # The vocabulary's own spread, so a random start is as loud as a typical token, not 1/std louder.
        gen = torch.Generator().manual_seed(int(seed))
        return torch.randn(tuple(text_vectors.shape), generator=gen) * float(table.detach().float().std())
    return text_vectors


def create(spec: EmbeddingConfig, parts: Any, captions: Mapping[str, str | None] | None = None,
           seed: int = 0) -> Embedding:
    """A new embedding whose vectors are the frozen token rows of `spec.init_text` (or, by
    `spec.init`, random from `seed` or zeros).

    This is the step-0 embedding of every run: training starts from it and `tiframework
    eval` scores it as the baseline. `spec` is validated by the config schema (VPT range).
    """
    name = check_name(spec.name, parts.tokenizer, captions)
    vpt = spec.vectors_per_token
    ids = prompt_token_ids(parts.tokenizer, spec.init_text, None, 0, parts.vocab_size)
    if len(ids) > vpt:
        # A1111 silently drops the extra tokens; the guide reports such embeddings "die".
        raise UserError(
            f"embedding.init_text {spec.init_text!r} is {len(ids)} tokens but vectors_per_token is "
            f"{vpt}; shorten the init text to at most {vpt} tokens or raise vectors_per_token to {len(ids)}"
        )
    table = parts.text_encoder.get_input_embeddings().weight  # (vocab, width), frozen
    rows = table[torch.tensor(ids, dtype=torch.long, device=table.device)] if ids else table[:0]
    vectors = start_vectors(spec, table, init_vectors(rows.cpu(), vpt, int(table.shape[1])), seed)
    return Embedding(name, vectors, step=0, sd_checkpoint=parts.checkpoint_hash,
                     sd_checkpoint_name=parts.checkpoint_name)


# ---------------------------------------------------------------------------- saving


def resolve_format(path: str | Path, fmt: str | None) -> str:
    """The format to write: `fmt`, or the one the extension implies."""
    suffix = Path(path).suffix.lower()
    if fmt is None:
        if suffix not in SUFFIX_FORMATS:
            raise UserError(f"{path}: cannot tell the embedding format from {suffix or 'no extension'!r}; "
                            "use .pt (A1111), .safetensors (A1111/kohya) or .bin (diffusers), or pass a format")
        return SUFFIX_FORMATS[suffix]
    if fmt not in FORMATS:
        raise UserError(f"unknown embedding format {fmt!r}; choose one of {', '.join(FORMATS)}")
    # Loaders pick their reader by extension: a pickle named .safetensors (or the reverse)
    # would fail to load in A1111.
    if fmt == "a1111-safetensors" and suffix != ".safetensors":
        raise UserError(f"{path}: the a1111-safetensors format needs a .safetensors file name")
    if fmt == "a1111-pt" and suffix == ".safetensors":
        raise UserError(f"{path}: the a1111-pt format is a pickle; name the file .pt")
    return fmt


def _payload(emb: Embedding, fmt: str) -> dict[str, Any]:
    vectors = emb.vectors.detach().to("cpu", torch.float32).contiguous().clone()
    if fmt == "a1111-pt":
        return {
            "string_to_token": {"*": A1111_TOKEN},
            "string_to_param": {"*": vectors},
            "name": emb.name,
            "step": int(emb.step),
            "sd_checkpoint": emb.sd_checkpoint,
            "sd_checkpoint_name": emb.sd_checkpoint_name,
        }
    return {"emb_params" if fmt == "a1111-safetensors" else emb.name: vectors}


def save_embedding(emb: Embedding, path: str | Path, fmt: str | None = None) -> Path:
    """Write `emb` atomically in `fmt` (None: from the extension); return the path."""
    path = Path(path)
    fmt = resolve_format(path, fmt)
    payload = _payload(emb, fmt)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".safetensors":
            meta = {"name": emb.name, "step": str(int(emb.step)), "sd_checkpoint": emb.sd_checkpoint,
                    "sd_checkpoint_name": emb.sd_checkpoint_name}
            # Serialized in memory, written by Python: a full disk is then an OSError naming the
            # file, where safetensors' own file writer raises its SafetensorError.
            tmp.write_bytes(save(payload, metadata={k: v for k, v in meta.items() if v is not None}))
        else:
            save_pickle(payload, tmp)
    return path


# ---------------------------------------------------------------------------- loading


def _sniff(path: Path) -> str:
    """'pickle' (torch zip or legacy pickle), 'safetensors' or 'png', from the first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":  # u64 header length, then the JSON header
        return "safetensors"
    if is_png(path):
        return "png"
    size = path.stat().st_size
    what = "an empty file (0 bytes)" if size == 0 else "neither safetensors, a PyTorch .pt/.bin nor an A1111 PNG"
    raise UserError(f"{path}: not an embedding file ({what})")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:
        raise UserError(f"{path}: corrupt or truncated safetensors file ({str(exc).splitlines()[0][:120]})") from None
    return tensors, meta


def _as_vectors(path: Path, value: Any, finite: bool = True) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise UserError(f"{path}: embedding vectors must be (n_vectors, width) floats, found {shape}")
    # Old sd-concepts-library files hold one vector as (width,).
    vectors = (value.unsqueeze(0) if value.ndim == 1 else value).detach().to(torch.float32).clone()
    if finite and not torch.isfinite(vectors).all():
        bad = int((~torch.isfinite(vectors)).any(dim=1).sum())
        raise UserError(f"{path}: {bad} of its {vectors.shape[0]} vectors hold NaN/Inf values (a run that "
                        "diverged); use an earlier checkpoint")
    return vectors


def _int_or_zero(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _from_a1111_dict(path: Path, data: dict[str, Any], file_format: str, finite: bool) -> Embedding:
    params = data["string_to_param"]
    params = getattr(params, "_parameters", params)  # torch 1.11 files hold a ParameterDict
    if not isinstance(params, dict) or len(params) != 1:
        found = len(params) if isinstance(params, dict) else type(params).__name__
        raise UserError(f"{path}: A1111 embedding must hold exactly one vector set, found {found}")
    return Embedding(
        name=str(data.get("name") or path.stem),
        vectors=_as_vectors(path, next(iter(params.values())), finite),
        step=_int_or_zero(data.get("step")),
        sd_checkpoint=_text_or_none(data.get("sd_checkpoint")),
        sd_checkpoint_name=_text_or_none(data.get("sd_checkpoint_name")),
        file_format=file_format,
    )


def _from_tensor_dict(path: Path, tensors: dict[str, Any], meta: dict[str, str], finite: bool = True) -> Embedding:
    if "clip_g" in tensors and "clip_l" in tensors:
        raise UserError(f"{path}: this embedding is for SDXL (clip_g + clip_l); tiframework works with SD 1.x")
    if len(tensors) != 1:
        raise UserError(f"{path}: not an embedding: expected one tensor ('emb_params' or a token), "
                        f"found keys {', '.join(sorted(map(str, tensors))[:5])}")
    key, value = next(iter(tensors.items()))
    a1111 = key == "emb_params"
    return Embedding(
        # diffusers uses the key as the prompt token; A1111 files carry the name beside it.
        name=(meta.get("name") or path.stem) if a1111 else str(key),
        vectors=_as_vectors(path, value, finite),
        step=_int_or_zero(meta.get("step")),
        sd_checkpoint=meta.get("sd_checkpoint"),
        sd_checkpoint_name=meta.get("sd_checkpoint_name"),
        file_format="a1111-safetensors" if a1111 else "diffusers",
    )


def load_embedding(path: str | Path, expected_width: int | None = None, finite: bool = True) -> Embedding:
    """Read any supported embedding file (A1111 .pt/.safetensors/.png, diffusers); check its
    width against the model's when given. `finite=False` lets `inspect` show NaN vectors."""
    path = Path(path)
    check_embedding_path(path)
    kind = _sniff(path)
    if kind == "safetensors":
        emb = _from_tensor_dict(path, *_read_safetensors(path), finite=finite)
    elif kind == "png":
        data = read_png_embedding(path)
        if "string_to_param" not in data:
            raise UserError(f"{path}: the image's embedding data has no 'string_to_param'")
        emb = _from_a1111_dict(path, data, "a1111-png", finite)
    else:
        data = load_pickle(path)
        if isinstance(data, dict) and "string_to_param" in data:
            emb = _from_a1111_dict(path, data, "a1111-pt", finite)
        elif isinstance(data, dict):
            emb = _from_tensor_dict(path, data, {}, finite)
        else:
            raise UserError(f"{path}: not an embedding: the file holds a {type(data).__name__}, not a dict")
    if expected_width is not None and emb.width != expected_width:
        raise UserError(f"{path}: this embedding is for {family(emb.width)} (width {emb.width}); "
                        f"the model expects {expected_width}")
    return emb


def describe(emb: Embedding, path: str | Path | None = None) -> dict[str, Any]:
    """A JSON-ready summary (what `tiframework embedding inspect` prints)."""
    return {
        "file": str(path) if path is not None else None,
        "format": emb.file_format,
        "name": emb.name,
        "step": emb.step,
        "vectors": emb.n_vectors,
        "width": emb.width,
        "model_family": family(emb.width),
        "norms": [round(n, 6) for n in vector_norms(emb.vectors)],
        "sd_checkpoint": emb.sd_checkpoint,
        "sd_checkpoint_name": emb.sd_checkpoint_name,
    }
