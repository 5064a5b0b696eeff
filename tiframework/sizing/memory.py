"""Peak memory of the training step: measured on a GPU, or estimated without one.

Both run the project's own step: `TextualInversionModule.training_step` (under the
autocast Lightning would use), the backward pass and the AdamW step from
`configure_optimizers`, on frozen parts placed by `SDParts.prepare` as `train` places them.

The estimate runs that step on fake tensors (`sizing.fakestep`: shapes and dtypes, no
data, CUDA's autocast choices emulated) and counts every tensor allocated and freed with
torch's `MemTracker`, so it sees what autograd really keeps: with frozen weights a layer
saves far less than a formula for full fine-tuning would say, and under autocast a
frozen float32 weight's half-precision copy is kept for the backward pass. `validate`
checks the count against real tensors and the CPU allocator on a small model.

Not counted, on a GPU: the CUDA context (outside `max_memory_allocated` too), cuBLAS and
cuDNN workspaces, the kernels' own scratch memory (the backward kernels differ between
devices), and the CUDA allocator's rounding of each block to 512 bytes; a measured peak
is expected somewhat above the estimate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from tiframework.config import ExperimentConfig
from tiframework.sd.models import SDParts, load_model, unet_parameters
from tiframework.sd.runtime import Machine, Runtime, detect_machine, resolve_runtime
from tiframework.sizing.fakestep import (
    PlaceholderScalars,
    cuda_policy_on_cpu,
    fake_parts,
    forward_context,
    quiet_step,
    run_steps,
    step_batch,
)
from tiframework.training.module import TextualInversionModule

GIB = 2**30


@dataclass
class StepMemory:
    peak_bytes: int
    by_kind: dict[str, int]  # at the peak: Parameter, Activation, Temp, Gradient, Optstate, ...
    method: str  # "estimated" or "measured-cuda"
    runtime: Runtime

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB


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
    with tracker, PlaceholderScalars(), cuda_policy_on_cpu(), quiet_step():
        data = step_batch(parts, cfg, size, batch, "cpu")
        # MemTracker follows modules through one iteration; each step is a new one.
        run_steps(module, data, lambda: forward_context(runtime, fake_cpu=True), steps,
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
    parts = fake_parts(cfg, runtime, mode)
    with mode:
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
    with quiet_step():
        run_steps(module, data, lambda: forward_context(runtime, fake_cpu=False), steps)
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
        with PlaceholderScalars(), quiet_step():
            run_steps(module, data, contextlib.nullcontext, 2)

    weights = sum(p.nbytes for m in (parts.unet, parts.text_encoder, parts.vae) for p in m.parameters())
    fixed = ("Parameter", "Buffer")
    return Validation(est.peak_bytes - sum(est.by_kind[k] for k in fixed),
                      real.peak_bytes - sum(real.by_kind[k] for k in fixed), allocator_peak(steps),
                      est.by_kind["Parameter"], weights)
