"""The shared forward pass: grouping, partitions, and each member's loss as if alone."""

from __future__ import annotations

import torch

from runs import shrunk_quickstart as config
from tiframework.data.dataset import collate
from tiframework.training.module import TextualInversionModule
from tiframework.training.population.shared_pass import (
    MemberBatch,
    encode_conditioning,
    group_indices,
    member_losses,
    partition,
)

CAPTION = "1girl, solo, red hair"


def test_group_indices_keeps_first_seen_order():
    assert group_indices(["a", "b", "a", "c", "b"]) == {"a": [0, 2], "b": [1, 4], "c": [3]}
    assert group_indices([]) == {}


def test_partition_bounds_samples_per_pass_and_never_splits_a_member():
    assert partition([4, 4, 4], None) == [[0, 1, 2]]
    assert partition([2, 1, 3, 1], 3) == [[0, 1], [2], [3]]
    assert partition([5, 1], 2) == [[0], [1]]  # too big for a pass: alone, not split
    assert partition([], 4) == []


def batch(parts, prompts: list[str], seed: int, side: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    return collate([{"latent": torch.randn(4, side, side, generator=g), "prompt": p, "seed": seed * 64 + i,
                     "index": i} for i, p in enumerate(prompts)])


def test_one_member_loss_is_the_solo_modules_loss_bit_for_bit(tmp_path, tiny_parts):
    cfg = config(tmp_path)
    module = TextualInversionModule(cfg, tiny_parts, torch.randn(4, tiny_parts.width))
    b = batch(tiny_parts, [f"{CAPTION}, kiri_ti", f"kiri_ti, {CAPTION}"], 3)
    solo = module.noise_loss(b)
    (shared,) = member_losses(tiny_parts, module.noise_scheduler,
                              [MemberBatch.from_collated(b, "kiri_ti", module.vectors, 1)], "cpu")
    assert torch.equal(solo, shared)  # same noise, timesteps and normalisation


def test_members_get_their_own_loss_and_gradient(tmp_path, tiny_parts):
    cfg = config(tmp_path)
    long = ", ".join(["red hair"] * 45)  # 90 tokens: two chunks, a different conditioning length
    spec = [("kiri_ti", 4, [f"{CAPTION}, kiri_ti"], 4, 1), ("bee_ti", 2, [f"bee_ti, {long}", "bee_ti"], 4, 2),
            ("sora_ti", 3, ["sora_ti"] * 3, 6, 1)]
    modules, batches, raw = [], [], []
    for k, (name, vpt, prompts, side, skip) in enumerate(spec):
        c = cfg.model_copy(update={"embedding": cfg.embedding.model_copy(update={"name": name}),
                                   "model": cfg.model.model_copy(update={"clip_skip": skip})})
        m = TextualInversionModule(c, tiny_parts, torch.randn(vpt, tiny_parts.width, generator=torch.Generator()
                                                                                                 .manual_seed(k)))
        raw.append(batch(tiny_parts, prompts, k, side))
        modules.append(m)
        batches.append(MemberBatch.from_collated(raw[-1], name, m.vectors, skip))
    conds = encode_conditioning(tiny_parts, batches)
    assert [tuple(c.shape[:2]) for c in conds] == [(1, 77), (2, 154), (3, 77)]
    losses = member_losses(tiny_parts, modules[0].noise_scheduler, batches, "cpu")
    sum(losses).backward()
    shared_grads = [m.vectors.grad.clone() for m in modules]
    for m, b, loss, grad in zip(modules, raw, losses, shared_grads, strict=True):
        m.vectors.grad = None
        alone = m.noise_loss(b)
        alone.backward()
        assert torch.allclose(loss, alone, rtol=1e-5, atol=0)
        # Its gradient is its own loss's gradient: the others' losses add nothing to it.
        assert torch.allclose(grad, m.vectors.grad, rtol=1e-4, atol=1e-9)
        assert grad.abs().sum() > 0
