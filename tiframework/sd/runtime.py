"""How the frozen model runs on this machine: device, weight dtype, autocast, checkpointing.

The defaults are chosen so SD 1.5 textual inversion fits a 4 GB GPU, as the guide's users
have (it says 8 GB is needed and 6 GB is "a mixed bag"). On a GPU:

- frozen UNet / text encoder / VAE weights in half precision (`model.dtype: auto` = the
  dtype autocast computes in: bfloat16 where the GPU supports it, else float16). Nothing
  frozen needs float32 master weights: only the new vectors learn, and they and their
  AdamW moments stay float32;
- gradient checkpointing of the UNet and text encoder for SD-1.5-sized models
  (`training.gradient_checkpointing: auto`), as A1111 and kohya offer: the backward pass
  recomputes activations instead of keeping them;
- the VAE leaves the GPU once the latents are cached (`training.offload_vae`), and comes
  back only to decode previews and evaluation images.

On a CPU everything stays float32 without checkpointing unless a key says otherwise.
The decisions are pure functions of the config, the machine and the UNet's size, so
they are unit-tested and `tiframework config show` prints them; `SDParts` applies them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from tiframework.config import ExperimentConfig
from tiframework.errors import UserError

# UNet parameters from which a model counts as SD-1.5-sized: SD 1.x and 2.x have ~860M,
# the toy world's and the tiny preset's a few million.
SD15_SIZED = 400_000_000

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# training.precision -> Lightning's precision on a GPU ("auto" is decided by the GPU).
GPU_PRECISION = {"32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


@dataclass(frozen=True)
class Machine:
    """What the resolution needs to know about the device a run trains on."""

    device: str  # "cpu" or "cuda"
    bf16: bool = False  # the GPU computes in bfloat16 (Ampere and newer)
    name: str = "cpu"

    @classmethod
    def cuda(cls, bf16: bool = True, name: str = "a CUDA GPU") -> Machine:
        return cls("cuda", bf16, name)


def detect_machine(requested: str = "auto") -> Machine:
    """The machine `training.device` names: `auto` takes the GPU when one is visible."""
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise UserError("training.device: cuda was asked for but no GPU is visible; use training.device=auto")
    if requested == "cpu" or not available:
        return Machine("cpu")
    return Machine("cuda", torch.cuda.is_bf16_supported(), torch.cuda.get_device_name())


def resolve_precision(requested: str, machine: Machine) -> str:
    """Lightning's precision: autocast on a GPU (`auto` = bf16 where supported); the CPU runs float32."""
    if machine.device != "cuda":
        return "32-true"
    if requested == "auto":
        return "bf16-mixed" if machine.bf16 else "16-mixed"
    return GPU_PRECISION[requested]


def resolve_dtype(requested: str, machine: Machine, precision: str) -> str:
    """The frozen weights' dtype: `auto` = what autocast computes in on a GPU, float32 on a CPU.

    An explicit `model.dtype` is kept on any device (half precision on a CPU is slow, but
    it is what was asked for).
    """
    if requested != "auto":
        return requested
    if machine.device != "cuda":
        return "float32"
    return {"bf16-mixed": "bfloat16", "16-mixed": "float16"}.get(precision, "float32")


def resolve_checkpointing(setting: bool | str, machine: Machine, unet_parameters: int) -> bool:
    """`auto`: on for SD-1.5-sized models on a GPU, where it decides whether a step fits a
    small card; off on a CPU and for the small presets, where it would only cost time."""
    if setting != "auto":
        return bool(setting)
    return machine.device == "cuda" and unet_parameters >= SD15_SIZED


@dataclass(frozen=True)
class Runtime:
    """Every resolved choice of a run; `describe()` goes to summary.json and the log."""

    device: str
    device_name: str
    weight_dtype: str  # the frozen UNet / text encoder / VAE
    precision: str  # Lightning's: "32-true", "bf16-mixed", "16-mixed"
    gradient_checkpointing: bool
    compile: bool
    offload_vae: bool  # the VAE leaves the GPU once latents are cached

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.weight_dtype]

    def describe(self) -> dict[str, Any]:
        # The trained vectors and AdamW state are float32 whatever the frozen weights are.
        return asdict(self) | {"vectors_dtype": "float32"}

    def summary_line(self) -> str:
        return (f"{self.device} ({self.device_name}): frozen weights {self.weight_dtype}, precision {self.precision}, "
                f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}, "
                f"compile {'on' if self.compile else 'off'}, VAE {'offloaded' if self.offload_vae else 'kept'} "
                "after latent caching")


def resolve_runtime(cfg: ExperimentConfig, machine: Machine, unet_parameters: int) -> Runtime:
    """All the run's device choices from its config, the machine and the UNet's size."""
    t = cfg.training
    precision = resolve_precision(t.precision, machine)
    return Runtime(
        device=machine.device, device_name=machine.name,
        weight_dtype=resolve_dtype(cfg.model.dtype, machine, precision), precision=precision,
        gradient_checkpointing=resolve_checkpointing(t.gradient_checkpointing, machine, unet_parameters),
        compile=t.compile, offload_vae=t.offload_vae and machine.device == "cuda",
    )
