"""The step-memory estimator (`sizing.memory`) against independent counts, on the tiny preset."""

from __future__ import annotations

import pytest

from tiframework.config import load_config
from tiframework.sd.runtime import Machine
from tiframework.sizing import memory


def tiny(*overrides: str):
    return load_config(None, ["model.preset=tiny", "embedding.name=tiny_ti", "embedding.vectors_per_token=4",
                              *overrides])


@pytest.mark.parametrize("checkpointing", ["false", "true"])
def test_estimate_matches_real_tensors_and_the_cpu_allocator(checkpointing):
    """The fake-tensor estimate of a float32 CPU step equals what real tensors allocate.

    Three counts of everything but the weights (activations, backward temporaries, AdamW
    state) at the peak: MemTracker on fake tensors, MemTracker on real tensors, and the
    CPU allocator's own events (torch's profiler); and the weights against a hand count.
    """
    v = memory.validate(tiny(f"training.gradient_checkpointing={checkpointing}"), size=32, batch=2)
    assert v.estimated == pytest.approx(v.counted, rel=0.01)
    assert v.counted == pytest.approx(v.allocator, rel=0.01)
    assert v.weights_tracked == v.weights_expected


def test_checkpointing_and_half_weights_shrink_the_estimate():
    cpu = Machine("cpu")
    plain = memory.estimate_step_memory(tiny(), 32, 2, machine=cpu)
    ckpt = memory.estimate_step_memory(tiny("training.gradient_checkpointing=true"), 32, 2, machine=cpu)
    half = memory.estimate_step_memory(tiny("model.dtype=bfloat16"), 32, 2, machine=cpu)
    assert ckpt.by_kind["Activation"] < 0.8 * plain.by_kind["Activation"]
    assert half.by_kind["Parameter"] == pytest.approx(plain.by_kind["Parameter"] / 2, rel=0.02)
    # On a GPU the defaults put the weights in bf16 and the VAE off the device.
    gpu = memory.estimate_step_memory(tiny(), 32, 2)
    assert (gpu.runtime.weight_dtype, gpu.runtime.offload_vae) == ("bfloat16", True)
    assert gpu.by_kind["Parameter"] < half.by_kind["Parameter"]  # the VAE is not counted
