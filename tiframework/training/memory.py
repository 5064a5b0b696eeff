"""Peak memory of the training step: measured on a GPU, or estimated without one.

Both run the project's own step: `TextualInversionModule.training_step` (under the
autocast Lightning would use), the backward pass and the AdamW step from
`configure_optimizers`, on frozen parts placed by `SDParts.prepare` as `train` places them.

The estimate runs that step on fake tensors (`FakeTensorMode`: shapes and dtypes, no
data) and counts every tensor allocated and freed with torch's `MemTracker`, so it sees
what autograd really keeps (with frozen weights a layer saves far less than a formula
for full fine-tuning would say). The frozen model is built fake too: SD 1.5 costs neither
its 4 GB of weights nor minutes of arithmetic. Two things differ from a GPU run:

- Autocast. On CUDA, group/layer norms, upsampling and softmax run in float32 under
  autocast; CPU autocast keeps them in bfloat16. `cuda_policy_on_cpu` registers CUDA's
  policy for those ops on CPU autocast while the estimate runs; `autocast_mismatches`
  checks it op for op against CUDA autocast itself (fake CUDA tensors run a forward pass
  without a GPU, though not a backward pass).
- Data-dependent reads (`float(loss)`, a timestep drawn with `int(...)`) have no data to
  read; `PlaceholderScalars` answers them with 1.0 / 0 / True, which changes no shape.

Not counted, on a GPU: the CUDA context (outside `max_memory_allocated` too), cuBLAS and
cuDNN workspaces, and the kernels' own scratch memory (the backward kernels differ
between devices); a measured peak is expected somewhat above the estimate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map_only

from tiframework.config import ExperimentConfig
from tiframework.sd.models import SDParts, load_model, unet_parameters
from tiframework.sd.runtime import Machine, Runtime, detect_machine, resolve_runtime
from tiframework.training.module import TextualInversionModule

GIB = 2**30
# A booru caption of 28 tags: one 77-token chunk, as most training captions are.
CAPTION = ("1girl, solo, long hair, pink hair, green eyes, hat, green dress, smile, looking at viewer, "
           "outdoors, standing, holding, bangs, blush, open mouth, short sleeves, white background, "
           "upper body, simple background, day, sky, cloud, grass, tree, flower, bow, ribbon, frills")
_LOW = (torch.float16, torch.bfloat16)


@dataclass
class StepMemory:
    peak_bytes: int
    by_kind: dict[str, int]  # at the peak: Parameter, Activation, Temp, Gradient, Optstate, ...
    method: str  # "estimated" or "measured-cuda"
    runtime: Runtime

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB


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
        if dtypes and getattr(func, "__name__", "") not in ("__get__", "to", "float"):
            self.calls.append((getattr(func, "__name__", str(func)), dtypes))
        return out


def autocast_mismatches(cfg: ExperimentConfig, size: int, batch: int = 1) -> tuple[int, list[str]]:
    """Run the loss's forward pass under real CUDA autocast (fake CUDA tensors) and under
    `cuda_policy_on_cpu` (fake CPU tensors); return (calls compared, differences)."""
    logs = []
    for device in ("cuda", "cpu"):
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        with _fake_default_dtype(torch.bfloat16), mode, torch.device(device):
            parts = load_model(cfg.model)
        with mode, PlaceholderScalars():
            module = TextualInversionModule(cfg, parts, torch.zeros(cfg.embedding.vectors_per_token, parts.width,
                                                                    device=device))
            module._device = torch.device(device, 0) if device == "cuda" else torch.device(device)  # Lightning's `.to()` would set it (it cannot move fake weights)
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


# --- the step ------------------------------------------------------------------------------


class PlaceholderScalars(TorchDispatchMode):
    """Answers reads of a fake tensor's value (`float(loss)`, `int(t)`, `bool(mask.any())`)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            t = args[0]
            return True if t.dtype == torch.bool else 1.0 if t.is_floating_point() else 0
        return func(*args, **(kwargs or {}))


class _NoHook:
    def remove(self) -> None:
        pass


class StepTracker(MemTracker):
    """torch's `MemTracker`, adjusted for a step over a frozen model.

    - MemTracker hooks the gradient of every parameter of a module it sees run, and torch
      refuses hooks on tensors without gradients: frozen weights are marked as hooked
      already (they never get a gradient to count).
    - It also keeps every module's own peak, walking all tracked modules after each op
      (58 of 75 s for SD 1.5); only the step's overall peak is kept here.
    """

    def __init__(self, frozen: list[torch.nn.Module]) -> None:
        super().__init__()
        for module in frozen:
            for param in module.parameters():
                if not param.requires_grad:
                    self._param_to_grad_hook_handles[param] = (_NoHook(), _NoHook())

    def _update_peak_stats(self, peak_state: Any) -> None:
        for device, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(device, 0) < snap["Total"]:
                self._peak_mem[device] = snap["Total"]
                self._peak_mem_snap[device] = dict(snap)


@contextlib.contextmanager
def _fake_default_dtype(dtype: torch.dtype) -> Iterator[None]:
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


def _run_steps(module: TextualInversionModule, batch: dict, context_factory: Callable[[], Any],
               steps: int, before_step: Callable[[], None] = lambda: None) -> None:
    optimizer = module.configure_optimizers()
    for _ in range(steps):
        before_step()
        with context_factory():
            loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def track_step(parts: SDParts, cfg: ExperimentConfig, runtime: Runtime, size: int, batch: int,
               steps: int = 2) -> StepMemory:
    """Peak memory of `steps` training steps on CPU tensors (real or fake), counted by `StepTracker`.

    `runtime.precision` is emulated as CUDA autocast would run it. Two steps: from the
    second on, AdamW's moments exist, as in every later step.
    """
    module = TextualInversionModule(cfg, parts, torch.zeros(cfg.embedding.vectors_per_token, parts.width))
    tracker = StepTracker(parts.frozen_modules())
    if not runtime.offload_vae:
        tracker.track_external(parts.vae)  # kept on the device through training
    with tracker, PlaceholderScalars(), cuda_policy_on_cpu(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer here: nothing to log to
        data = step_batch(parts, cfg, size, batch, "cpu")
        # MemTracker follows modules through one iteration; each step is a new one.
        _run_steps(module, data, lambda: forward_context(runtime, fake_cpu=True), steps,
                   before_step=tracker.reset_mod_stats)
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    total = int(peak.pop("Total"))
    return StepMemory(total, {str(getattr(k, "value", k)): int(v) for k, v in peak.items()}, "estimated", runtime)


def estimate_step_memory(cfg: ExperimentConfig, size: int, batch: int, machine: Machine | None = None,
                         steps: int = 2) -> StepMemory:
    """The step's peak memory on `machine` (default: a CUDA GPU with bf16), estimated on fake
    tensors: the frozen model is built fake, in the dtype the run would cast it to."""
    machine = machine or Machine.cuda(bf16=True)
    runtime = resolve_runtime(cfg, machine, unet_parameters(cfg.model))
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with _fake_default_dtype(runtime.dtype), mode:
        parts = load_model(cfg.model)
    with mode:
        # Fake weights cannot be moved (`.to` swaps tensors, which fake ones refuse): they are
        # built where the run would put them, and `prepare` finds nothing to move.
        parts.prepare(dataclasses.replace(runtime, device="cpu"))
        return track_step(parts, cfg, runtime, size, batch, steps)


def measure_step_memory(cfg: ExperimentConfig, size: int, batch: int, parts: SDParts | None = None,
                        steps: int = 2) -> StepMemory:
    """The step's peak `torch.cuda.max_memory_allocated` on this machine's GPU (latents already cached)."""
    machine = detect_machine("cuda")
    parts = parts or load_model(cfg.model)
    runtime = resolve_runtime(cfg, machine, sum(p.numel() for p in parts.unet.parameters()))
    parts.prepare(runtime)
    if runtime.offload_vae:
        parts.offload_vae()
    module = TextualInversionModule(cfg, parts, torch.zeros(cfg.embedding.vectors_per_token, parts.width)).cuda()
    data = step_batch(parts, cfg, size, batch, "cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    _run_steps(module, data, lambda: forward_context(runtime, fake_cpu=False), steps)
    torch.cuda.synchronize()
    return StepMemory(torch.cuda.max_memory_allocated(), {}, "measured-cuda", runtime)


# --- checking the estimate -------------------------------------------------------------------


def allocator_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes the CPU allocator held above its starting level while `fn` ran, from the
    allocation events torch's profiler records: a count independent of MemTracker."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    level = peak = 0
    for event in events:
        level += event.nbytes()
        peak = max(peak, level)
    return peak


@dataclass
class Validation:
    """One CPU float32 step counted three ways, plus the weights counted by hand (bytes)."""

    estimated: int  # fake tensors, StepTracker: everything but the weights
    counted: int  # real tensors, StepTracker: the same
    allocator: int  # real tensors, the CPU allocator's own events
    weights_tracked: int  # StepTracker's weights at the peak (fake run)
    weights_expected: int  # the UNet's and text encoder's (and a kept VAE's) parameters, by hand


def validate(cfg: ExperimentConfig, size: int, batch: int) -> Validation:
    """Check the estimator on a model small enough to run for real on this CPU."""
    cpu = Machine("cpu")
    est = estimate_step_memory(cfg, size, batch, machine=cpu)
    parts = load_model(cfg.model)
    runtime = resolve_runtime(cfg, cpu, sum(p.numel() for p in parts.unet.parameters()))
    parts.prepare(runtime)
    real = track_step(parts, cfg, runtime, size, batch)
    module = TextualInversionModule(cfg, parts, torch.zeros(cfg.embedding.vectors_per_token, parts.width))
    data = step_batch(parts, cfg, size, batch, "cpu")

    def steps() -> None:
        with PlaceholderScalars(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.log.*")
            _run_steps(module, data, contextlib.nullcontext, 2)

    weights = sum(p.nbytes for m in (parts.unet, parts.text_encoder, parts.vae) for p in m.parameters())
    fixed = ("Parameter", "Buffer")
    return Validation(est.peak_bytes - sum(est.by_kind[k] for k in fixed),
                      real.peak_bytes - sum(real.by_kind[k] for k in fixed), allocator_peak(steps),
                      est.by_kind["Parameter"], weights)
