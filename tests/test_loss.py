import math

import pytest
import torch
import torch.nn.functional as F

from bavit.core.labels import IGNORE_INDEX
from bavit.core.loss import AccumulativeCrossEntropy, PatchRankingLoss


def test_equals_eq3_and_f_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 576, 2, generator=generator)
    labels = torch.randint(0, 2, (3, 576), generator=generator)
    loss = AccumulativeCrossEntropy()(logits, labels)
    # Eq. 3: -(1 / (N*M)) sum_i sum_j sum_c y log(y_hat)
    log_probs = logits.log_softmax(-1)
    eq3 = -(F.one_hot(labels, 2) * log_probs).sum() / (3 * 576)
    assert torch.allclose(loss, eq3, atol=1e-6)
    assert torch.allclose(loss, F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1)), atol=1e-7)


def test_ignored_tokens_are_excluded_from_sum_and_count():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 10, 2, generator=generator)
    labels = torch.randint(0, 2, (2, 10), generator=generator)
    labels[0, :4] = IGNORE_INDEX
    valid = labels != IGNORE_INDEX
    expected = F.cross_entropy(logits[valid], labels[valid])
    assert torch.allclose(AccumulativeCrossEntropy()(logits, labels), expected, atol=1e-7)
    # Grid-shaped labels work the same.
    assert torch.allclose(AccumulativeCrossEntropy()(logits, labels.reshape(2, 2, 5)), expected, atol=1e-7)


def test_all_ignored_gives_zero_with_grad():
    logits = torch.randn(1, 4, 2, requires_grad=True)
    loss = AccumulativeCrossEntropy()(logits, torch.full((1, 4), IGNORE_INDEX))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


def test_class_weights_match_weighted_cross_entropy():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 16, 2, generator=generator)
    labels = torch.randint(0, 2, (4, 16), generator=generator)
    weights = (1.0, 2.5)
    expected = F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), weight=torch.tensor(weights))
    assert torch.allclose(AccumulativeCrossEntropy(weights)(logits, labels), expected, atol=1e-7)
    assert AccumulativeCrossEntropy().weight is None  # off by default


def test_patch_ranking_loss_by_hand():
    def softplus(x):
        return math.log1p(math.exp(x))

    a, b, c = 2.0, 0.5, -1.0  # FG-minus-BG margins
    logits = torch.tensor([[[0.0, a], [0.0, b], [0.0, c], [5.0, 0.0]]], requires_grad=True)
    fractions = torch.tensor([[1.0, 0.5, 0.0, -1.0]])  # the last patch is ignored
    loss = PatchRankingLoss()(logits, fractions)
    expected = (0.5 * softplus(b - a) + 1.0 * softplus(c - a) + 0.5 * softplus(c - b)) / 2.0
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    margin_grad = logits.grad[0, :, 1] - logits.grad[0, :, 0]
    assert margin_grad[0] < 0 < margin_grad[2]  # descent raises the most-object patch, lowers the empty one
    assert logits.grad[0, 3].abs().sum() == 0  # the ignored patch takes no part
    reversed_logits = torch.tensor([[[0.0, c], [0.0, b], [0.0, a], [5.0, 0.0]]])
    assert PatchRankingLoss()(reversed_logits, fractions) > loss  # the wrong order costs more
    flat = PatchRankingLoss()(logits.detach(), torch.full((1, 4), 0.3))
    assert flat.item() == 0.0  # no pair differs
