"""The training step on fake tensors (`sizing.fakestep`): CUDA autocast emulated on a CPU, FLOPs."""

from __future__ import annotations

import contextlib

import torch
from torch.utils.flop_counter import FlopCounterMode

from tiframework.config import load_config
from tiframework.sd.models import load_model
from tiframework.sizing import fakestep
from tiframework.training.module import TextualInversionModule


def tiny(*overrides: str):
    return load_config(None, ["model.preset=tiny", "embedding.name=tiny_ti", "embedding.vectors_per_token=4",
                              *overrides])


def test_cuda_autocast_emulation_matches_cuda_autocast(monkeypatch):
    compared, diffs = fakestep.autocast_mismatches(tiny(), 32)
    assert compared > 100 and diffs == []
    # ...and the check can fail: without the emulation, CPU autocast keeps the norms in bf16.
    monkeypatch.setattr(fakestep, "_FP32_OPS", ())
    _, diffs = fakestep.autocast_mismatches(tiny(), 32)
    assert any("norm" in d for d in diffs)


def test_fake_flop_count_equals_the_real_steps():
    """FLOPs counted on fake tensors equal those of a real float32 step on the same model, and
    do not include checkpointing's recomputation."""
    cfg = tiny()
    fake = fakestep.step_flops(cfg, 32, 2)
    parts = load_model(cfg.model)
    module = TextualInversionModule(cfg, parts, torch.zeros(4, parts.width))
    data = fakestep.step_batch(parts, cfg, 32, 2, "cpu")
    with fakestep.PlaceholderScalars(), fakestep.quiet_step(), \
            FlopCounterMode(display=False, custom_mapping=fakestep.CPU_ATTENTION_FLOPS) as counter:
        fakestep.run_steps(module, data, contextlib.nullcontext, 1)
    assert fake == counter.get_total_flops() > 0
    assert fakestep.step_flops(tiny("training.gradient_checkpointing=true"), 32, 2) == fake
    assert fakestep.step_flops(cfg, 32, 4) > 1.9 * fake  # twice the batch, about twice the work
