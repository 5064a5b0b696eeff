"""The memory savers change memory, not what is learned: gradient checkpointing and half-precision
frozen weights give the same embedding update as the plain float32 path (tiny preset, CPU).

Tolerances, on the update (final vectors minus initial ones) after 6 steps, relative L2
distance to the plain run's update:
- gradient checkpointing: identical (1e-6): the recomputed forward is the same arithmetic;
- float16 weights: within 2% (measured 0.2%);
- bfloat16 weights: within 15% (measured 6%; bf16 keeps 8 bits of mantissa);
while a run with another seed (other data order and noise) lands well outside them
(measured 52%), so the bounds tell the same update from a different one.

Measured at the quickstart's 64 px (latents 32x32), which these runs keep; the other tiny runs
train at 32 px. At 32 px float16 differs by 2.9%, bfloat16 by 3.3%, another seed by 135%
(2026-12-07).
"""

from __future__ import annotations

import torch

from runs import shrunk_quickstart as config
from tiframework.sd.embeddings import create, load_embedding
from tiframework.training.train import train


def update(tmp_path, make_tiny_parts, run_id: str, *overrides: str) -> tuple[torch.Tensor, dict]:
    cfg = config(tmp_path, "data.max_side=64", "training.max_steps=6", f"logging.run_id={run_id}", *overrides)
    start = create(cfg.embedding, make_tiny_parts()).vectors
    summary = train(cfg, parts=make_tiny_parts())
    return load_embedding(summary["embedding"]).vectors - start, summary["runtime"]


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_checkpointing_and_half_weights_learn_the_same_update(tmp_path, make_tiny_parts):
    plain, runtime = update(tmp_path, make_tiny_parts, "plain")
    assert (runtime["weight_dtype"], runtime["gradient_checkpointing"]) == ("float32", False)
    assert plain.norm() > 0

    ckpt, runtime = update(tmp_path, make_tiny_parts, "ckpt", "training.gradient_checkpointing=true")
    assert runtime["gradient_checkpointing"] is True
    torch.testing.assert_close(ckpt, plain, atol=1e-6, rtol=0)

    fp16, runtime = update(tmp_path, make_tiny_parts, "fp16", "model.dtype=float16")
    assert runtime["weight_dtype"] == "float16"
    assert distance(fp16, plain) < 0.02

    bf16, runtime = update(tmp_path, make_tiny_parts, "bf16", "model.dtype=bfloat16",
                           "training.gradient_checkpointing=true")
    assert (runtime["weight_dtype"], runtime["gradient_checkpointing"]) == ("bfloat16", True)
    assert distance(bf16, plain) < 0.15

    other, _ = update(tmp_path, make_tiny_parts, "other-seed", "training.seed=1")
    assert distance(other, plain) > 0.3


def test_a_compiled_unet_is_not_part_of_the_state(tmp_path, tiny_parts):
    from tiframework.training.module import TextualInversionModule

    module = TextualInversionModule(config(tmp_path), tiny_parts, torch.zeros(4, tiny_parts.width),
                                    compile_unet=True)  # torch.compile is lazy: nothing compiles here
    assert list(module.state_dict()) == ["vectors"]
    assert [n for n, _ in module.named_parameters()] == ["vectors"]
