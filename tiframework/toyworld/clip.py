"""The toy CLIP scorer: a small open_clip model trained contrastively on image <-> caption.

Its config is `tif-toy-clip.json` beside this file (open_clip's format, same BPE tokenizer
as SD); `register()` adds it to open_clip's model names, so the evaluation code loads it
like any open_clip model.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tiframework.toyworld.batches import fit, noisy_caption, world_batch

MODEL_NAME = "tif-toy-clip"
CONFIG_PATH = Path(__file__).with_name(f"{MODEL_NAME}.json")
WEIGHTS_KEYWORD = "toyworld"  # `eval.clip_pretrained: toyworld` names the shipped weights below
WEIGHTS = Path(__file__).parent / "weights" / "clip" / "open_clip_model.safetensors"
OPENAI_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
OPENAI_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@functools.lru_cache(maxsize=1)
def register() -> None:
    """Make `tif-toy-clip` an open_clip model name (once: each call would rescan open_clip's configs)."""
    open_clip.add_model_config(CONFIG_PATH)


def resolve_weights(spec: str | None) -> str | None:
    """`eval.clip_pretrained` as a file: the `toyworld` keyword is the package's own weights,
    so configs that use them work from any directory."""
    return str(WEIGHTS) if spec == WEIGHTS_KEYWORD else spec


def new_clip():
    register()
    return open_clip.create_model(MODEL_NAME), open_clip.get_tokenizer(MODEL_NAME)


def train_clip(seconds: float, seed: int, batch: int = 128) -> tuple[torch.nn.Module, list[float]]:
    """Symmetric InfoNCE; captions get tag shuffling and dropout so short prompts
    ("red dress") land near matching images too."""
    torch.manual_seed(seed)
    rng = random.Random(f"clip:{seed}")
    model, tokenizer = new_clip()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    def loss_fn(step: int) -> tuple[torch.Tensor, float]:
        x, attrs = world_batch(rng, batch, exclude=())
        pixels = ((x + 1) / 2 - OPENAI_MEAN) / OPENAI_STD  # open_clip's own preprocessing
        text = tokenizer([noisy_caption(a, rng, 0.2, 0.0) for a in attrs])
        img, txt = F.normalize(model.encode_image(pixels), dim=-1), F.normalize(model.encode_text(text), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        target = torch.arange(batch)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return loss, loss.item()

    def clamp_scale(step: int) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # CLIP's cap at 100

    return model.eval(), fit("clip", seconds, opt, loss_fn, warmup=50, after_step=clamp_scale)


def save_clip(model, folder: Path) -> Path:
    """`open_clip_model.safetensors` + `open_clip_config.json` (open_clip's local-dir layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "open_clip_model.safetensors"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))
    cfg = {"model_cfg": json.loads(CONFIG_PATH.read_text()),
           "preprocess_cfg": {"mean": OPENAI_MEAN.flatten().tolist(), "std": OPENAI_STD.flatten().tolist()}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=1))
    return path
