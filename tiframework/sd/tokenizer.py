"""The real CLIP BPE tokenizer, built offline.

SD 1.x uses OpenAI CLIP's tokenizer. Its BPE merges ship inside open_clip_torch
(`bpe_simple_vocab_16e6.txt.gz`), so we rebuild the exact `vocab.json` / `merges.txt`
pair that `openai/clip-vit-large-patch14` uses on the hub, once, into a cache folder.
Token ids equal CLIP's (tests compare against open_clip's own tokenizer).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path

from open_clip.tokenizer import default_bpe
from transformers import CLIPTokenizer

from tiframework.fileio import atomic_write_text

VOCAB_SIZE = 49408
BOS_ID = 49406
EOS_ID = 49407
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level mapping: printable bytes map to themselves, the rest to
    # unused code points, so BPE never sees whitespace/control characters.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _cache_dir() -> Path:
    root = os.environ.get("TIFRAMEWORK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tiframework")
    return Path(root) / "clip-tokenizer"


def write_tokenizer_files(folder: Path) -> Path:
    """Write vocab.json + merges.txt (hub layout) built from open_clip's BPE file."""
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    # Same slice as CLIP's SimpleTokenizer: 49152 - 256 - 2 merges after the header.
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "vocab.json", json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """A `transformers.CLIPTokenizer` identical to SD 1.x's, built without a network."""
    folder = _cache_dir()
    if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
        write_tokenizer_files(folder)
    # from_pretrained on the hub file layout works across transformers 4.x and 5.x
    # (their constructors differ); the folder is local, so nothing is fetched.
    return CLIPTokenizer.from_pretrained(
        str(folder), local_files_only=True, model_max_length=MAX_LENGTH, pad_token="<|endoftext|>"
    )
