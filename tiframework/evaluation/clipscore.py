"""open_clip behind one small adapter: load a scorer from LOCAL weights, embed images and text.

Nothing here may touch the network. open_clip downloads in three places, and each is
closed off: a `pretrained` *tag* ('openai', 'laion2b_...') -> we only ever pass the
absolute path of a local file, which can never equal a tag; 'hf-hub:' model names -> not in
`clip_model_names()`, so rejected; configs whose text tower or tokenizer comes from
Hugging Face (hf_model_name, hf_tokenizer_name, SigLIP) -> rejected with a UserError.

Project configs (`clip_configs/*.json` beside this file, e.g. `tif-tiny-clip`, and the toy
world's `tif-toy-clip`) are registered with open_clip on first use, so they work like
built-in names.
"""

from __future__ import annotations

import difflib
import functools
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch
from PIL import Image

from tiframework.errors import UserError
from tiframework.toyworld import clip as toy_clip

CLIP_CONFIG_DIR = Path(__file__).parent / "clip_configs"
_LIST_NAMES_HINT = 'python -c "from tiframework.evaluation.clipscore import clip_model_names; print(clip_model_names())"'


@functools.lru_cache(maxsize=1)
def register_clip_configs() -> None:
    """Register every JSON in `clip_configs/`, and the toy world's CLIP, with open_clip (once)."""
    # open_clip rescans the whole folder: a config added there later needs no code.
    open_clip.add_model_config(CLIP_CONFIG_DIR)
    toy_clip.register()


def clip_model_names() -> list[str]:
    """Model names `load_clip_scorer` accepts: open_clip's built-ins plus project configs."""
    register_clip_configs()
    return list(open_clip.list_models())


def check_clip_model_name(model_name: str) -> None:
    """UserError unless `model_name` is a known config that can be built without the hub."""
    names = clip_model_names()
    if model_name not in names:
        close = difflib.get_close_matches(model_name, names, n=3)
        maybe = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"eval.clip_model {model_name!r} is not an open_clip model config.{maybe} "
            f"List the valid names with: {_LIST_NAMES_HINT}"
        )
    text_cfg = open_clip.get_model_config(model_name).get("text_cfg", {})
    if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name") or "siglip" in model_name.lower():
        raise UserError(
            f"eval.clip_model {model_name!r} needs a text model or tokenizer from the Hugging Face hub, "
            "which tiframework never downloads; use an OpenAI-style CLIP such as ViT-L-14 or ViT-B-16"
        )


class ClipScorer:
    """A frozen open_clip model with its own eval preprocess and tokenizer.

    Features come back L2-normalized, float32, on the CPU (N, embed_dim): they are small,
    and the metrics then never care which device the model runs on.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        model_name: str,
        embed_dim: int,
        device: torch.device,
        batch_size: int = 32,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.embed_dim = embed_dim
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) normalized image embeddings, in batches of `batch_size`."""
        bad = [type(im).__name__ for im in images if not isinstance(im, Image.Image)]
        if bad:
            raise TypeError(f"image_features expects PIL images, got {bad[0]}")
        out = [torch.zeros(0, self.embed_dim)]  # so that no images give a (0, D) tensor
        for i in range(0, len(images), self.batch_size):
            batch = torch.stack(
                [self.preprocess(im.convert("RGB")) for im in images[i : i + self.batch_size]]
            )
            out.append(self.model.encode_image(batch.to(self.device), normalize=True).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) normalized text embeddings; texts longer than the context are truncated."""
        if isinstance(texts, str):
            raise TypeError("text_features expects a list of strings, got one string")
        out = [torch.zeros(0, self.embed_dim)]
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.batch_size]))  # (B, context_length)
            out.append(self.model.encode_text(tokens.to(self.device), normalize=True).float().cpu())
        return torch.cat(out)


def _create(model_name: str, weights: Path | None) -> tuple[torch.nn.Module, Callable]:
    """open_clip model + eval preprocess; `weights` is an absolute path, so never a hub tag."""
    if weights is not None and not weights.is_file():
        raise UserError(f"eval.clip_pretrained: {weights} not found (give a local open_clip weights file)")
    try:
        # A random initialisation (no weights) from a fixed seed, whatever the global RNG has
        # drawn: two scorers of one model must score alike (a run and its re-evaluation, or a
        # population member and its solo run).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            # No tower weights either: with no full checkpoint, open_clip would fetch them.
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name,
                pretrained=str(weights) if weights else None,
                pretrained_image=False,
                pretrained_text=False,
                weights_only=True,
            )
    except Exception as exc:  # the name was checked: a failure here is the file not fitting the model
        if weights is None:
            raise
        raise UserError(f"eval.clip_pretrained: {weights} {_why_unloadable(exc, model_name)}") from exc
    return model, preprocess


def _why_unloadable(exc: Exception, model_name: str) -> str:
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
        # Not "retry with weights_only=False": that would run code from an untrusted file.
        return (
            "cannot be read as a state_dict (torch.save'd .bin/.pt/.pth, or .safetensors). "
            "OpenAI's original TorchScript .pt archives must be converted to a state_dict first"
        )
    detail = " ".join(str(exc).split())[:200]
    return (
        f"is not a weights file for {model_name} ({type(exc).__name__}: {detail}). "
        "Set eval.clip_model to the architecture the file was saved from"
    )


def load_clip_scorer(
    model_name: str,
    pretrained_path: str | Path | None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> ClipScorer:
    """Build `model_name` and fill it from a local weights file (.bin/.pt/.pth/.safetensors).

    The file must hold every weight of that architecture (strict load). One mismatch no
    loader can catch: OpenAI's CLIP weights were trained with QuickGELU and load cleanly
    into 'ViT-L-14' too, giving subtly wrong features; use 'ViT-L-14-quickgelu' for them.
    `pretrained_path=None` keeps open_clip's random initialisation (tests, plumbing
    checks); scores from it mean nothing about the character.
    """
    check_clip_model_name(model_name)
    device = torch.device(device)
    weights = Path(pretrained_path).expanduser().resolve() if pretrained_path is not None else None
    model, preprocess = _create(model_name, weights)  # built on the CPU, moved once loaded
    tokenizer = open_clip.get_tokenizer(model_name)
    embed_dim = int(open_clip.get_model_config(model_name)["embed_dim"])
    return ClipScorer(model.to(device), preprocess, tokenizer, model_name, embed_dim, device, batch_size)
