"""The training step without data or a device: fake tensors, CUDA autocast on a CPU, FLOPs.

`FakeTensorMode` runs torch code on tensors that have shapes and dtypes but no data, so
the project's real step (`TextualInversionModule.training_step`, backward, AdamW) can be
run for SD 1.5 at 512 px in seconds and a little RAM, to count its memory
(`sizing.memory`) and its FLOPs (`step_flops`). What a fake CPU run needs for that:

- the frozen model built fake, where and in the dtype the run would put it (`fake_parts`):
  fake weights cannot be moved, `.to` swaps tensors and fake ones refuse;
- CUDA's autocast choices (`cuda_policy_on_cpu`): on CUDA, group/layer norms, upsampling
  and softmax run in float32 under autocast, CPU autocast keeps them in bfloat16.
  `autocast_mismatches` checks the emulation op for op against CUDA autocast itself
  (fake CUDA tensors run a forward pass without a GPU, though not a backward pass);
- answers to data-dependent reads (`float(loss)`, a timestep drawn with `int(...)`):
  `PlaceholderScalars` returns 1.0 / 0 / True, which changes no shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map_only
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from tiframework.config import ExperimentConfig, with_overrides
from tiframework.sd.models import SDParts, build_architecture, unet_parameters
from tiframework.sd.runtime import Machine, Runtime, resolve_runtime
from tiframework.training.module import TextualInversionModule

# A booru caption of 28 tags: one 77-token chunk, as most training captions are.
CAPTION = ("1girl, solo, long hair, pink hair, green eyes, hat, green dress, smile, looking at viewer, "
           "outdoors, standing, holding, bangs, blush, open mouth, short sleeves, white background, "
           "upper body, simple background, day, sky, cloud, grass, tree, flower, bow, ribbon, frills")
_LOW = (torch.float16, torch.bfloat16)


# --- CUDA's autocast policy, on CPU autocast --------------------------------------------------

# CUDA autocast runs these in float32 (CPU autocast leaves them in the input's dtype).
_FP32_OPS = ("group_norm", "layer_norm", "native_layer_norm", "upsample_nearest2d", "upsample_nearest2d.vec",
             "_upsample_nearest_exact2d", "_upsample_nearest_exact2d.vec", "upsample_bilinear2d",
             "upsample_bilinear2d.vec", "exp", "log", "rsqrt", "reciprocal", "softplus", "pow.Tensor_Scalar",
             "pow.Tensor_Tensor", "erfinv")
# ...and these with `dtype=float32` when their input is half precision.
_FP32_DTYPE_OPS = ("softmax.int", "log_softmax.int", "sum", "sum.dim_IntList", "cumsum", "prod")
_AUTOCAST_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)


def _overload(name: str):
    op, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, op), overload or "default")


def _fp32_kernel(op) -> Callable[..., Any]:
    def kernel(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            args, kwargs = tree_map_only(torch.Tensor, lambda t: t.float() if t.dtype in _LOW else t, (args, kwargs))
            return op(*args, **kwargs)
    return kernel


def _fp32_dtype_kernel(op) -> Callable[..., Any]:
    position = next(i for i, a in enumerate(op._schema.arguments) if a.name == "dtype")
    keyword = op._schema.arguments[position].kwarg_only

    def kernel(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            if args[0].dtype in _LOW:
                if keyword and kwargs.get("dtype") is None:
                    kwargs["dtype"] = torch.float32
                elif not keyword and (len(args) <= position or args[position] is None):
                    args = (*args[:position], torch.float32, *args[position + 1:])
            return op(*args, **kwargs)
    return kernel


@contextlib.contextmanager
def cuda_policy_on_cpu() -> Iterator[None]:
    """While open, CPU autocast makes CUDA autocast's choices for the ops where the two differ.

    The kernels stay registered through the backward pass too: gradient checkpointing
    recomputes the forward there, under the autocast state of the original forward.
    """
    lib = torch.library.Library("aten", "IMPL")
    try:
        for name in _FP32_OPS:
            lib.impl(_overload(name), _fp32_kernel(_overload(name)), "AutocastCPU")
        for name in _FP32_DTYPE_OPS:
            lib.impl(_overload(name), _fp32_dtype_kernel(_overload(name)), "AutocastCPU")
        yield
    finally:
        lib._destroy()


@contextlib.contextmanager
def _cuda_autocast_without_gpu(dtype: torch.dtype) -> Iterator[None]:
    # torch.autocast("cuda") switches itself off without a GPU; the flags it would set, set directly.
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", False)


def forward_context(runtime: Runtime, fake_cpu: bool):
    """What Lightning wraps `training_step` in for `runtime.precision` (emulated on a fake CPU)."""
    if runtime.precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if runtime.precision == "bf16-mixed" else torch.float16
    return torch.autocast("cpu" if fake_cpu else "cuda", dtype=dtype)


class _DtypeLog(TorchFunctionMode):
    """(function, output dtypes) of every tensor-producing call: what autocast decided."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        dtypes = tuple(str(t.dtype) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        if dtypes and getattr(func, "__name__", "") != "__get__":
            self.calls.append((getattr(func, "__name__", str(func)), dtypes))
        return out


def autocast_mismatches(cfg: ExperimentConfig, size: int, batch: int = 1) -> tuple[int, list[str]]:
    """Run the loss's forward pass under real CUDA autocast (fake CUDA tensors) and under
    `cuda_policy_on_cpu` (fake CPU tensors); return (calls compared, differences)."""
    logs = []
    for device in ("cuda", "cpu"):
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        with fake_default_dtype(torch.bfloat16), mode, torch.device(device):
            parts = build_architecture(cfg.model)
        with mode, PlaceholderScalars():
            module = TextualInversionModule(cfg, parts, torch.zeros(cfg.embedding.vectors_per_token, parts.width,
                                                                    device=device))
            # What Lightning's `.to()` would set (it cannot move fake weights).
            module._device = torch.device(device, 0) if device == "cuda" else torch.device(device)
            data = step_batch(parts, cfg, size, batch, device)
            if device == "cpu":
                policy, context = cuda_policy_on_cpu(), torch.autocast("cpu", dtype=torch.bfloat16)
            else:
                policy, context = contextlib.nullcontext(), _cuda_autocast_without_gpu(torch.bfloat16)
            log = _DtypeLog()
            with policy, context, log:
                module.noise_loss(data)
        logs.append(log.calls)
    cuda, cpu = logs
    diffs = [f"{a[0]}: cuda {a[1]} vs emulated {b[1]}" for a, b in zip(cuda, cpu, strict=False) if a != b]
    if len(cuda) != len(cpu):
        diffs.append(f"{len(cuda)} calls under CUDA autocast, {len(cpu)} emulated")
    return len(cuda), diffs


# --- the step on fake tensors ---------------------------------------------------------------


class PlaceholderScalars(TorchDispatchMode):
    """Answers reads of a fake tensor's value (`float(loss)`, `int(t)`, `bool(mask.any())`)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            t = args[0]
            return True if t.dtype == torch.bool else 1.0 if t.is_floating_point() else 0
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def fake_default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def step_batch(parts: SDParts, cfg: ExperimentConfig, size: int, batch: int, device: str | torch.device) -> dict:
    """A batch as the DataLoader hands it to `training_step`: cached latents of `size` px
    images, captions through the run's template, per-sample seeds."""
    side = size // parts.vae_scale_factor
    template = cfg.data.templates[0]
    prompt = template.replace("[filewords]", CAPTION).replace("[name]", cfg.embedding.name)
    return {"latents": torch.randn(batch, 4, side, side, device=device), "prompts": [prompt] * batch,
            "seeds": torch.arange(batch), "indices": list(range(batch))}


def run_steps(module: TextualInversionModule, batch: dict, context_factory: Callable[[], Any],
              steps: int, before_step: Callable[[], None] = lambda: None) -> None:
    """`steps` training steps as Lightning's automatic optimization runs them: `training_step`
    inside the precision's forward context, backward, the AdamW step, gradients cleared."""
    optimizer = module.configure_optimizers()
    for _ in range(steps):
        before_step()
        with context_factory():
            loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)




def fake_parts(cfg: ExperimentConfig, runtime: Runtime, mode: FakeTensorMode) -> SDParts:
    """The frozen model of `cfg` on fake CPU tensors (its architecture: no weight file is read),
    in the dtype `runtime` gives it, prepared as `train` prepares it (`prepare` finds nothing
    to move)."""
    with fake_default_dtype(runtime.dtype), mode:
        parts = build_architecture(cfg.model)
    with mode:
        parts.prepare(dataclasses.replace(runtime, device="cpu"))
    return parts


def quiet_step() -> contextlib.AbstractContextManager:
    """Lightning warns that `self.log` has no Trainer to log to: there is none here, on purpose."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", message=".*self.log.*")
    return stack


# FlopCounterMode knows CUDA's fused attention kernels but not the CPU one a fake CPU run takes.
def _cpu_sdpa(query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(query.shape, key.shape, value.shape)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


_cpu_sdpa._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: called with tensors
_cpu_sdpa_backward._get_raw = True  # type: ignore[attr-defined]
CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
                       torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}


def step_flops(cfg: ExperimentConfig, size: int, batch: int, recompute: bool = False) -> int:
    """FLOPs of one training step (text encoder and UNet, forward and backward) on a GPU,
    counted by torch's `FlopCounterMode` on fake tensors.

    By default the model's FLOPs, without gradient checkpointing (MFU counts the model's
    arithmetic, not the recomputation a memory saving adds); `recompute=True` counts the
    step as `cfg` runs it, recomputation included.
    """
    if not recompute:
        cfg = with_overrides(cfg, {"training.gradient_checkpointing": False})
    runtime = resolve_runtime(cfg, Machine.cuda(bf16=True), unet_parameters(cfg.model))
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    parts = fake_parts(cfg, runtime, mode)
    with mode, PlaceholderScalars(), quiet_step():
        module = TextualInversionModule(cfg, parts, torch.zeros(cfg.embedding.vectors_per_token, parts.width))
        data = step_batch(parts, cfg, size, batch, "cpu")
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
            run_steps(module, data, contextlib.nullcontext, 1)
    return counter.get_total_flops()
