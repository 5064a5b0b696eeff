"""Per-vector telemetry of an embedding against the model's vocabulary (after the A1111
embedding-inspector extension): each vector's L2 norm relative to the vocabulary's median
norm, its cosine to its init vector, and its nearest vocabulary tokens by cosine.

A vector whose cosine to its init is still ~1 has not moved off the init text (the
embedding then prompts as the init words would); a relative norm far above 1 is the
"fried" embedding A1111 users look for. Training logs this at evaluation steps
(`vectors.csv`), `tiframework embedding inspect --model ...` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

STILL_INIT_COSINE = 0.99  # above this for every vector: the embedding is essentially its init text


@dataclass
class VectorTelemetry:
    index: int
    norm: float
    relative_norm: float  # norm / the vocabulary's median norm
    cosine_to_init: float | None  # None: no init vectors given (or a zero init vector)
    nearest: list[tuple[str, float]]  # (token, cosine), best first

    def as_dict(self) -> dict[str, Any]:
        return {"vector": self.index, "norm": round(self.norm, 6), "relative_norm": round(self.relative_norm, 4),
                "cosine_to_init": None if self.cosine_to_init is None else round(self.cosine_to_init, 4),
                "nearest": [[tok, round(c, 4)] for tok, c in self.nearest]}


def token_names(tokenizer: Any, ids: list[int]) -> list[str]:
    """CLIP BPE tokens as words: `hair</w>` -> `hair`."""
    return [t.replace("</w>", "") for t in tokenizer.convert_ids_to_tokens(ids)]


@torch.no_grad()
def vector_telemetry(vectors: torch.Tensor, table: torch.Tensor, tokenizer: Any,
                     init: torch.Tensor | None = None, k: int = 5) -> list[VectorTelemetry]:
    """Telemetry of `vectors` (VPT, width) against the token table `(vocab, width)`."""
    v = vectors.detach().float().cpu()
    rows = table.detach().float().cpu()
    median = float(rows.norm(dim=1).median())
    cos = F.normalize(v, dim=1) @ F.normalize(rows, dim=1).T  # (VPT, vocab)
    best = cos.topk(min(k, rows.shape[0]), dim=1)
    out = []
    for i in range(v.shape[0]):
        norm = float(v[i].norm())
        to_init = None
        if init is not None and float(init[i].norm()) > 0 and norm > 0:
            to_init = float(F.cosine_similarity(v[i], init[i].detach().float().cpu(), dim=0))
        names = token_names(tokenizer, best.indices[i].tolist())
        out.append(VectorTelemetry(i, norm, norm / median if median else float("nan"), to_init,
                                   list(zip(names, best.values[i].tolist(), strict=True))))
    return out


def still_init(report: list[VectorTelemetry]) -> bool:
    """True when every vector's cosine to its init is above `STILL_INIT_COSINE`."""
    cosines = [r.cosine_to_init for r in report]
    return bool(cosines) and all(c is not None and c > STILL_INIT_COSINE for c in cosines)


def telemetry_scalars(report: list[VectorTelemetry]) -> dict[str, float]:
    """The few numbers a dashboard plots: mean / max relative norm, min / mean cosine to init."""
    rel = [r.relative_norm for r in report]
    out = {"vectors/relative_norm_mean": sum(rel) / len(rel), "vectors/relative_norm_max": max(rel)}
    cosines = [r.cosine_to_init for r in report if r.cosine_to_init is not None]
    if cosines:
        out |= {"vectors/cosine_to_init_min": min(cosines), "vectors/cosine_to_init_mean": sum(cosines) / len(cosines)}
    return out


def format_telemetry(report: list[VectorTelemetry]) -> str:
    """One line per vector, as `embedding inspect` prints it."""
    lines = []
    for r in report:
        init = "-" if r.cosine_to_init is None else f"{r.cosine_to_init:.3f}"
        near = ", ".join(f"{t} {c:.2f}" for t, c in r.nearest)
        lines.append(f"  #{r.index:<3} norm {r.norm:.4f} ({r.relative_norm:.2f}x vocab median)  "
                     f"cos to init {init}  nearest: {near}")
    return "\n".join(lines)
