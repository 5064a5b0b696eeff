"""The adapter around the frozen Stable Diffusion 1.x parts.

Everything that knows about diffusers / transformers loading lives here; the rest of
tiframework sees an `SDParts` bundle. Three sources:

- a diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, ...),
- one original-layout checkpoint (`.safetensors`, or `.ckpt` read with
  `weights_only=True`, so no pickled code runs) through diffusers' single-file loader,
  with our shipped SD 1.5 configs so nothing is fetched from a hub,
- built-in presets: `tiny` and `sd15-random` (configs in `model_configs/`, seeded random
  weights) and `toyworld` (a diffusers folder of project-trained weights).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tiframework.config import ModelConfig
from tiframework.errors import UserError
from tiframework.sd.runtime import Runtime
from tiframework.sd.tokenizer import clip_tokenizer

log = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).parent / "model_configs"
# The toy world's weights are package data of tiframework.toyworld (a diffusers folder), found
# through that package's resources: data only, no code of the stage above is imported.
TOYWORLD_DIR = Path(str(importlib.resources.files("tiframework.toyworld") / "weights"))
RANDOM_PRESETS = {"tiny": CONFIG_ROOT / "tiny", "sd15-random": CONFIG_ROOT / "sd15"}
PRESETS = (*RANDOM_PRESETS, "toyworld")
CHECKPOINT_SUFFIXES = {".safetensors", ".ckpt"}


@dataclass
class SDParts:
    """The frozen SD 1.x components, plus what training needs to know about them."""

    tokenizer: Any  # transformers.CLIPTokenizer
    text_encoder: Any  # transformers.CLIPTextModel
    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL: the checkpoint's own, used for training latents
    scheduler_config: dict[str, Any]
    source: str  # "preset:tiny", a folder or a file
    native_size: int  # the resolution the model was trained at (512 for SD 1.x)
    bucket_step: int  # bucket sides are multiples of this
    preview_vae: Any = None  # an external VAE for previews only
    _hash: str | None = field(default=None, repr=False)

    @property
    def width(self) -> int:
        """Token embedding width: 768 for SD 1.x, 1024 for SD 2.x."""
        return int(self.text_encoder.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.text_encoder.get_input_embeddings().num_embeddings)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    @property
    def checkpoint_name(self) -> str:
        return self.source.removeprefix("preset:") if self.source.startswith("preset:") else Path(self.source).stem

    @property
    def checkpoint_hash(self) -> str | None:
        """A1111's short hash (first 10 hex digits of the file's sha256), for `sd_checkpoint`."""
        full = self.file_sha256()
        return full[:10] if full else None

    def file_sha256(self) -> str | None:
        """The model file's sha256 (None for a folder or a preset); read once, it can be GBs."""
        if self._hash is None and os.path.isfile(self.source):
            digest = hashlib.sha256()
            with open(self.source, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            self._hash = digest.hexdigest()
        return self._hash

    def frozen_modules(self) -> list[torch.nn.Module]:
        mods = [self.text_encoder, self.unet, self.vae]
        return mods + ([self.preview_vae] if self.preview_vae is not None else [])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> SDParts:
        for m in self.frozen_modules():
            move(m, device, dtype)
        return self

    def prepare(self, runtime: Runtime) -> SDParts:
        """Put every frozen part where and how `runtime` says, before latents are cached.

        Every run calls it: a sweep worker's parts still carry the previous run's placement
        and checkpointing, which this run's settings may not share.
        """
        self.to(runtime.device, runtime.dtype)
        self.set_gradient_checkpointing(runtime.gradient_checkpointing)
        return self

    def offload_vae(self) -> None:
        """The VAEs to the CPU (latents are cached): their GPU memory goes to the training step."""
        for vae in (self.vae, self.preview_vae):
            if vae is not None:
                move(vae, "cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def set_gradient_checkpointing(self, on: bool) -> None:
        """Recompute the UNet's and text encoder's activations in the backward pass (or stop)."""
        if on:
            self.unet.enable_gradient_checkpointing()  # diffusers: non-reentrant torch.utils.checkpoint
            enable = getattr(self.text_encoder, "activation_checkpointing_enable", None)  # transformers >= 5
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.unet.disable_gradient_checkpointing()
            disable = getattr(self.text_encoder, "activation_checkpointing_disable", None)
            (disable or self.text_encoder.gradient_checkpointing_disable)()
        # transformers checkpoints a layer only in training mode. The frozen encoder stays in
        # eval mode; only the checkpointed layers' own flag is set (not `.train()`, which would
        # reach their dropout children), so nothing but checkpointing changes.
        for m in self.text_encoder.modules():
            if hasattr(m, "gradient_checkpointing"):
                m.training = on

    def gradient_checkpointing(self) -> bool:
        return bool(self.unet.is_gradient_checkpointing)

    def attention(self) -> dict[str, str]:
        """The attention implementation of each part (PyTorch SDPA is expected everywhere)."""
        procs = {type(p).__name__ for m in (self.unet, self.vae) for p in m.attn_processors.values()}
        return {"unet_vae": ", ".join(sorted(procs)),
                "text_encoder": str(getattr(self.text_encoder.config, "_attn_implementation", "unknown"))}

    def noise_scheduler(self):
        """A fresh DDPM scheduler with the model's noise schedule, for training."""
        return DDPMScheduler.from_config(self.scheduler_config)


def move(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> None:
    """`module.to(device, dtype)`, only on a change (a cast copies every weight)."""
    current, target = next(module.parameters()), torch.device(device)
    same_device = current.device.type == target.type and target.index in (None, current.device.index)
    if same_device and (dtype is None or current.dtype == dtype):
        return
    # diffusers' own `to` adds only a warning about "modules that should be kept in float32",
    # printed on every cast even when the list is empty (as for SD 1.x's UNet and VAE).
    torch.nn.Module.to(module, device=device, dtype=dtype)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _assemble(folder: Path, tokenizer: Any, text_encoder: Any, unet: Any, vae: Any, source: str) -> SDParts:
    """SDParts with the layout and noise schedule that `folder` (the model's configs) gives.

    The native size and bucket step come from `tiframework.json` when the folder has one,
    else from the architecture: the UNet's sample size in pixels, and sides divisible
    through every down-sampling of VAE and UNet.
    """
    parts = SDParts(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae,
                    scheduler_config=_scheduler_config(folder), source=source, native_size=0, bucket_step=0)
    extra = folder / "tiframework.json"
    if extra.is_file():
        info = _read_json(extra)
        parts.native_size, parts.bucket_step = int(info["native_size"]), int(info["bucket_step"])
    else:
        scale = parts.vae_scale_factor
        parts.native_size = int(unet.config.sample_size) * scale
        parts.bucket_step = max(8, scale * 2 ** (len(unet.config.block_out_channels) - 1))
    return parts


def _tokenizer_for(folder: Path | None):
    if folder is not None and (folder / "tokenizer").is_dir():
        return CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    return clip_tokenizer()


def _scheduler_config(folder: Path) -> dict[str, Any]:
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        path = CONFIG_ROOT / "sd15" / "scheduler" / "scheduler_config.json"
    cfg = _read_json(path)
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def build_random(preset: str, seed: int = 0) -> SDParts:
    """A preset from its shipped configs with seeded random weights (no files needed)."""
    return _random_from(RANDOM_PRESETS[preset], f"preset:{preset}", seed, _tokenizer_for(None))


def _random_from(folder: Path, source: str, seed: int, tokenizer: Any) -> SDParts:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_read_json(folder / "unet" / "config.json"))
    vae = AutoencoderKL.from_config(_read_json(folder / "vae" / "config.json"))
    text_cfg = CLIPTextConfig(**_read_json(folder / "text_encoder" / "config.json"))
    text_encoder = CLIPTextModel(text_cfg)
    return _assemble(folder, tokenizer, text_encoder, unet, vae, source)


def build_architecture(cfg: ModelConfig) -> SDParts:
    """The model `cfg` names, built from its configs with random weights, frozen: no weight
    file is read. For what needs shapes, not values (memory and FLOP estimates)."""
    if cfg.preset in RANDOM_PRESETS and not cfg.path:
        parts = build_random(cfg.preset, cfg.seed)
    else:
        folder = unet_config_folder(cfg)
        parts = _random_from(folder, cfg.path or f"preset:{cfg.preset}", cfg.seed, _tokenizer_for(folder))
    for m in parts.frozen_modules():
        freeze(m)
    return parts


def load_diffusers_folder(folder: Path, source: str | None = None) -> SDParts:
    for sub in ("unet", "vae", "text_encoder"):
        if not (folder / sub).is_dir():
            raise UserError(f"{folder}: not a diffusers Stable Diffusion folder (no {sub}/); "
                            "point model.path at the folder holding model_index.json")
    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder", local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{folder}: could not load the diffusers model ({str(exc).splitlines()[0]})") from None
    return _assemble(folder, _tokenizer_for(folder), text_encoder, unet, vae, source or str(folder))


def _single_file_config_dir(config_folder: Path, tmp: Path) -> Path:
    """Our shipped configs plus tokenizer files: diffusers' `config=` without a hub."""
    target = tmp / "config"
    shutil.copytree(config_folder, target)
    clip_tokenizer().save_pretrained(str(target / "tokenizer"))
    return target


def load_single_file(path: Path, config_folder: Path | None = None) -> SDParts:
    """An original-layout SD 1.x checkpoint via diffusers' `from_single_file`.

    `.ckpt` files are read by diffusers with `torch.load(weights_only=True)`: a pickle
    that would run code fails to load instead of running. `config_folder` (default:
    the SD 1.5 configs) tells diffusers the architecture, so nothing is downloaded.
    """
    config_folder = config_folder or CONFIG_ROOT / "sd15"
    with tempfile.TemporaryDirectory(prefix="tif-config-") as tmp:
        cfg_dir = _single_file_config_dir(config_folder, Path(tmp))
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), config=str(cfg_dir), local_files_only=True,
                safety_checker=None, requires_safety_checker=False,
            )
        except Exception as exc:  # diffusers raises many types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"{path}: could not load as an SD 1.x checkpoint ({first}); "
                "use an SD 1.x .safetensors/.ckpt file or a diffusers folder"
            ) from None
    return _assemble(config_folder, pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, str(path))


def load_vae(path: str) -> Any:
    """An external VAE: a diffusers folder (with or without `vae/`) or a single file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: VAE not found; fix model.preview_vae")
    try:
        if p.is_dir():
            sub = "vae" if (p / "vae").is_dir() else None
            return AutoencoderKL.from_pretrained(str(p), subfolder=sub, local_files_only=True)
        return AutoencoderKL.from_single_file(
            str(p), config=str(CONFIG_ROOT / "sd15"), subfolder="vae", local_files_only=True
        )
    except Exception as exc:
        raise UserError(f"{path}: could not load the VAE ({type(exc).__name__}); fix model.preview_vae") from None


def load_model(cfg: ModelConfig) -> SDParts:
    """Load the frozen parts a config names, on the CPU in float32, gradients off."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise UserError(f"{cfg.path}: model not found; fix model.path (a diffusers folder, "
                            ".safetensors or .ckpt)")
        if path.is_dir():
            parts = load_diffusers_folder(path)
        elif path.suffix.lower() in CHECKPOINT_SUFFIXES:
            parts = load_single_file(path)
        else:
            raise UserError(f"{cfg.path}: unknown model format; use a diffusers folder, .safetensors or .ckpt")
    elif cfg.preset in RANDOM_PRESETS:
        parts = build_random(cfg.preset, cfg.seed)
    elif cfg.preset == "toyworld":
        if not (TOYWORLD_DIR / "model_index.json").is_file():
            raise UserError(f"{TOYWORLD_DIR}: toy-world weights missing; run `tiframework toyworld build`")
        parts = load_diffusers_folder(TOYWORLD_DIR, source="preset:toyworld")
    else:
        raise UserError(f"model.preset: unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    if cfg.preview_vae:
        parts.preview_vae = load_vae(cfg.preview_vae)
        if cfg.train_with_preview_vae:
            warnings.warn(
                "model.train_with_preview_vae: training latents will come from an external VAE; "
                "the guide's 'fried' embeddings come from exactly this. Train with the checkpoint's own VAE.",
                stacklevel=2,
            )
            parts.vae = parts.preview_vae
    for m in parts.frozen_modules():
        freeze(m)
    return parts


def unet_config_folder(cfg: ModelConfig) -> Path:
    """The folder whose `unet/config.json` describes the UNet `cfg` names (no weights read)."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        return path if path.is_dir() else CONFIG_ROOT / "sd15"  # single files load with the SD 1.5 configs
    return TOYWORLD_DIR if cfg.preset == "toyworld" else RANDOM_PRESETS.get(cfg.preset or "", CONFIG_ROOT / "sd15")


def unet_parameters(cfg: ModelConfig) -> int:
    """The UNet's parameter count from its config alone: built on the meta device, so no memory."""
    path = unet_config_folder(cfg) / "unet" / "config.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; fix model.path or model.preset")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_read_json(path))
    return sum(p.numel() for p in unet.parameters())
