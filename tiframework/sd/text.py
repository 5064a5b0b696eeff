"""Prompt encoding with a trainable embedding spliced in, as A1111 does it.

The embedding's name in a prompt becomes `n_vectors` placeholder ids just past the
vocabulary (ids `V .. V+n-1`). A `SplicedEmbedding` wraps the frozen token-embedding
table: ordinary ids look up frozen rows, placeholder ids take rows of the trainable
vectors. The frozen table itself is never resized or handed to the optimizer (AdamW's
weight decay would otherwise move frozen rows too).

Long prompts are split into 75-token chunks, each encoded as its own
`[BOS] ... [EOS]` sequence of 77 and concatenated (A1111's trick), so a long tag
caption never truncates away the embedding at the end of `[filewords], [name]`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import ftfy
import torch
from torch import nn

from tiframework.sd.names import name_pattern
from tiframework.sd.tokenizer import BOS_ID, EOS_ID

CHUNK = 75  # tokens per chunk, without BOS/EOS


class SplicedEmbedding(nn.Module):
    """Frozen token table + an optional extra block of rows for placeholder ids."""

    def __init__(self, base: nn.Embedding):
        super().__init__()
        self.base = base
        # A plain dict, not an attribute: assigning the trainable Parameter to a module
        # attribute would register it as a parameter of the frozen text encoder.
        self.slot: dict[str, torch.Tensor | None] = {"extra": None}  # (n_vectors, width), set per call

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # No data-dependent branch here (`ids` may be on a GPU: reading it back would stall
        # every step); `encode_ids` checks placeholder ids against missing vectors on the CPU.
        vocab = self.base.num_embeddings
        vectors = self.slot["extra"]
        if vectors is None:
            return self.base(ids)  # (B, T, width)
        out = self.base(ids.clamp(max=vocab - 1))
        extra = vectors.to(out.dtype)[(ids - vocab).clamp(min=0, max=vectors.shape[0] - 1)]
        return torch.where((ids >= vocab).unsqueeze(-1), extra, out)


def install_splice(text_encoder: nn.Module) -> SplicedEmbedding:
    """Wrap the text encoder's token table once (idempotent); return the wrapper."""
    current = text_encoder.get_input_embeddings()
    if isinstance(current, SplicedEmbedding):
        return current
    spliced = SplicedEmbedding(current).train(current.training)  # a frozen encoder stays in eval mode
    text_encoder.set_input_embeddings(spliced)
    return spliced


@contextlib.contextmanager
def spliced_vectors(text_encoder: nn.Module, vectors: torch.Tensor | None) -> Iterator[None]:
    splice = install_splice(text_encoder)
    previous, splice.slot["extra"] = splice.slot["extra"], vectors
    try:
        yield
    finally:
        splice.slot["extra"] = previous


def prompt_token_ids(tokenizer, prompt: str, name: str | None, n_vectors: int, vocab_size: int) -> list[int]:
    """Token ids of `prompt` without BOS/EOS, the name replaced by placeholder ids."""
    pieces = name_pattern(name).split(prompt) if name else [prompt]
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i > 0:
            ids.extend(range(vocab_size, vocab_size + n_vectors))
        if piece.strip():
            # SD's tokenizer (transformers 4 + ftfy, as A1111 runs it) fixes mojibake, curly
            # quotes and full-width forms first; transformers 5's fast tokenizer does not.
            ids.extend(tokenizer(ftfy.fix_text(piece), add_special_tokens=False, verbose=False).input_ids)
    return ids


def chunked_ids(token_lists: Sequence[list[int]]) -> torch.Tensor:
    """(B, chunks * 77) ids: each 75-token chunk wrapped in BOS/EOS and padded with EOS."""
    n_chunks = max(1, *((len(t) + CHUNK - 1) // CHUNK for t in token_lists))
    rows = []
    for tokens in token_lists:
        row: list[int] = []
        for c in range(n_chunks):
            part = tokens[c * CHUNK : (c + 1) * CHUNK]
            row += [BOS_ID, *part, *([EOS_ID] * (CHUNK - len(part))), EOS_ID]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def tokenize(tokenizer, prompts: Sequence[str], name: str | None, n_vectors: int, vocab_size: int) -> torch.Tensor:
    return chunked_ids([prompt_token_ids(tokenizer, p, name, n_vectors, vocab_size) for p in prompts])


def encode_ids(text_encoder: nn.Module, ids: torch.Tensor, clip_skip: int = 1,
               vectors: torch.Tensor | None = None) -> torch.Tensor:
    """(B, chunks*77) ids -> (B, chunks*77, width) conditioning.

    Clip skip as A1111: 1 = the last layer's output (after the final layer norm);
    N > 1 = the output of layer -N, passed through the final layer norm.
    """
    batch, total = ids.shape
    if vectors is None and bool((ids >= install_splice(text_encoder).num_embeddings).any()):
        raise RuntimeError("placeholder ids in the prompt but no embedding vectors were given")
    chunks = ids.view(batch * (total // 77), 77).to(text_encoder.device)
    with spliced_vectors(text_encoder, vectors):
        out = text_encoder(chunks, output_hidden_states=clip_skip > 1)
    if clip_skip > 1:
        # transformers 4.x nests the layers under `text_model`; 5.x does not.
        final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
        hidden = final_norm(out.hidden_states[-clip_skip])
    else:
        hidden = out.last_hidden_state
    return hidden.reshape(batch, total, -1)


def encode_prompts(parts, prompts: Sequence[str], clip_skip: int = 1, name: str | None = None,
                   vectors: torch.Tensor | None = None) -> torch.Tensor:
    """Encode prompts for the UNet; `name` in them is replaced by `vectors`."""
    n = 0 if vectors is None else int(vectors.shape[0])
    ids = tokenize(parts.tokenizer, prompts, name if n else None, n, parts.vocab_size)
    return encode_ids(parts.text_encoder, ids, clip_skip, vectors)
