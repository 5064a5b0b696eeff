"""Norm control and the EMA of the vectors (`training.regularise`), against numbers worked by hand."""

from __future__ import annotations

import pytest
import torch

from tiframework.configoptions import EMAOptions, NormOptions
from tiframework.training.regularise import EmbeddingVectors, NormControl, VectorEMA, Vocabulary

VOCAB = Vocabulary(median_norm=0.5, std=0.01)


def control(rule: str, **kw) -> NormControl:
    return NormControl(NormOptions(norm_control=rule, **kw), torch.zeros(2, 2), VOCAB)


def test_vocabulary_median_norm_and_std():
    rows = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0]])  # norms 5, 1, 2
    vocab = Vocabulary.of(rows)
    assert vocab.median_norm == 2.0 and vocab.std == pytest.approx(float(rows.std()))


def test_project_keeps_direction_and_sets_the_norm():
    v = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    control("project").after_step(v, lr=0.1)  # default target: the vocabulary's median norm, 0.5
    torch.testing.assert_close(v, torch.tensor([[0.3, 0.4], [0.0, 0.5]]))
    control("project", norm_target=1.0).after_step(v, lr=0.1)
    torch.testing.assert_close(v, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


def test_decay_pulls_the_norm_towards_its_target_at_a_rate_tied_to_the_lr():
    v = torch.tensor([[3.0, 4.0]])
    control("decay").after_step(v, lr=0.002)  # pull min(1, 100 x 0.002) = 0.2: norm 5 -> 5 + 0.2 (0.4 - 5) = 4.08
    torch.testing.assert_close(v, torch.tensor([[0.6 * 4.08, 0.8 * 4.08]]))
    control("decay", norm_target=1.0).after_step(v, lr=0.5)  # pull capped at 1: the norm is the target
    torch.testing.assert_close(v.norm(dim=1), torch.tensor([1.0]))


def test_retract_scales_only_vectors_ten_times_louder_than_the_vocabulary():
    quiet = torch.tensor([[0.0, 0.001], [0.002, 0.0]])  # std below 10 x 0.01: untouched
    before = quiet.clone()
    control("retract").after_step(quiet, lr=0.1)
    assert torch.equal(quiet, before)
    loud = torch.tensor([[1.0, -1.0], [1.0, -1.0]])  # std 2/sqrt(3): ratio 0.01 / 1.1547 < 0.1
    ratio = 0.01 / float(loud.std())
    control("retract").after_step(loud, lr=0.1)
    torch.testing.assert_close(loud, torch.tensor([[1.0, -1.0], [1.0, -1.0]]) * ratio ** 0.1)


def test_init_l2_is_a_loss_term_and_only_it():
    rule = NormControl(NormOptions(norm_control="init_l2", init_l2_weight=0.5), torch.zeros(2, 2), VOCAB)
    v = torch.tensor([[1.0, 1.0], [0.0, 2.0]], requires_grad=True)  # squared distances 2 and 4: mean 3
    assert float(rule.penalty(v).detach()) == pytest.approx(1.5)
    before = v.detach().clone()
    rule.after_step(v.data, lr=0.1)
    assert torch.equal(v.detach(), before)
    for other in ("none", "project", "decay", "retract"):
        assert control(other).penalty(v) is None


def test_ema_copies_during_warmup_then_averages_every_n_steps():
    start = torch.zeros(1, 2)
    ema = VectorEMA(EMAOptions(ema_decay=0.5, ema_every=1, ema_warmup=1), start)
    ema.update(torch.tensor([[2.0, 2.0]]), step=1)  # warm-up: a copy
    assert ema.average.tolist() == [[2.0, 2.0]]
    ema.update(torch.tensor([[4.0, 0.0]]), step=2)  # 0.5 old + 0.5 new
    assert ema.average.tolist() == [[3.0, 1.0]]
    sparse = VectorEMA(EMAOptions(ema_decay=0.5, ema_every=2), start)
    sparse.update(torch.ones(1, 2), step=1)  # not an update step
    assert sparse.average.tolist() == [[0.0, 0.0]]
    sparse.update(torch.ones(1, 2), step=2)
    assert sparse.average.tolist() == [[0.5, 0.5]]


class Saved(EmbeddingVectors):
    def __init__(self, vectors: torch.Tensor, ema: VectorEMA | None):
        self.vectors, self.ema = vectors, ema


def test_output_is_the_ema_only_when_one_is_kept():
    v = torch.ones(1, 2)
    off = VectorEMA(EMAOptions(), torch.zeros(1, 2))
    assert Saved(v, off).output is v and Saved(v, None).output is v
    assert Saved(v, off).trained is None and Saved(v, None).trained is None
    on = VectorEMA(EMAOptions(ema_decay=0.9), torch.zeros(1, 2))
    assert Saved(v, on).output.tolist() == [[0.0, 0.0]]
    assert Saved(v, on).trained.tolist() == [[1.0, 1.0]]  # saved beside the EMA for an exact resume


def test_the_vocabulary_is_measured_on_first_use_not_when_built():
    # The sweeps' memory estimate builds modules on fake tensors, where a median cannot be read.
    rule = NormControl(NormOptions(norm_control="project"), torch.zeros(1, 2), torch.tensor([[3.0, 4.0]]))
    assert "vocab" not in rule.__dict__
    v = torch.tensor([[0.0, 2.0]])
    rule.after_step(v, lr=0.1)
    torch.testing.assert_close(v, torch.tensor([[0.0, 5.0]]))
