import math

import pytest
import torch
import torch.nn.functional as F

from bavit.core.labels import IGNORE_INDEX
from bavit.core.loss import AccumulativeCrossEntropy, PatchRankingLoss


def eq3(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 3 written out: ``-(1 / (N*M)) sum_i sum_j sum_c y log(y_hat)`` over ``[N, M, 2]`` logits."""
    return -(F.one_hot(labels, 2) * logits.log_softmax(-1)).sum() / labels.numel()


def test_equals_eq3():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 576, 2, generator=generator)
    labels = torch.randint(0, 2, (3, 576), generator=generator)
    assert torch.allclose(AccumulativeCrossEntropy()(logits, labels), eq3(logits, labels), atol=1e-6)
    # By hand: a BG token at logits (0, 0) costs ln 2, a FG token at (0, ln 3) costs -ln(3/4): (ln 2 + ln 4/3) / 2
    tiny = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]])
    loss = AccumulativeCrossEntropy()(tiny, torch.tensor([[0, 1]])).item()
    assert loss == pytest.approx(math.log(8 / 3) / 2, rel=1e-6)


def test_ignored_tokens_are_excluded_from_sum_and_count():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 10, 2, generator=generator)
    labels = torch.randint(0, 2, (2, 10), generator=generator)
    labels[0, :4] = IGNORE_INDEX
    valid = labels != IGNORE_INDEX
    expected = eq3(logits[valid][None], labels[valid][None])  # Eq. 3 over the 16 labelled tokens alone
    assert torch.allclose(AccumulativeCrossEntropy()(logits, labels), expected, atol=1e-7)
    # Grid-shaped labels work the same.
    assert torch.allclose(AccumulativeCrossEntropy()(logits, labels.reshape(2, 2, 5)), expected, atol=1e-7)


def test_all_ignored_gives_zero_with_grad():
    logits = torch.randn(1, 4, 2, requires_grad=True)
    loss = AccumulativeCrossEntropy()(logits, torch.full((1, 4), IGNORE_INDEX))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


def test_class_weights_by_hand():
    """Weighted mean of the per-token losses, each weighted by its label's class weight; ignored tokens drop out.

    Tokens (logits, label): ((0, 0), BG) costs -ln(1/2) = ln 2; ((0, ln 3), FG) costs -ln(3/4) = ln(4/3);
    ((0, ln 3), BG) costs -ln(1/4) = ln 4; ((0, 5), ignored) costs nothing. With (w_bg, w_fg) = (1, 3):
    (1 ln 2 + 3 ln(4/3) + 1 ln 4) / (1 + 3 + 1) = 3 ln(8/3) / 5; unweighted: (ln 2 + ln(4/3) + ln 4) / 3 = ln(32/3) / 3.
    """
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [0.0, math.log(3.0)], [0.0, 5.0]]])
    labels = torch.tensor([[0, 1, 0, IGNORE_INDEX]])
    weighted = AccumulativeCrossEntropy((1.0, 3.0))(logits, labels).item()
    assert weighted == pytest.approx(3 * math.log(8 / 3) / 5, rel=1e-6)
    unweighted = AccumulativeCrossEntropy()(logits, labels).item()
    assert unweighted == pytest.approx(math.log(32 / 3) / 3, rel=1e-6)
    assert abs(weighted - unweighted) > 0.05  # the weights matter on this example
    # equal weights are no weights; swapping them weighs the two BG tokens instead: (3 ln 2 + ln 4/3 + 3 ln 4) / 7
    assert AccumulativeCrossEntropy((2.0, 2.0))(logits, labels).item() == pytest.approx(unweighted, rel=1e-6)
    assert AccumulativeCrossEntropy((3.0, 1.0))(logits, labels).item() == pytest.approx(
        (3 * math.log(2) + math.log(4 / 3) + 3 * math.log(4)) / 7, rel=1e-6)
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


def test_distillation_loss_by_hand():
    from bavit.core.loss import DistillationLoss

    # Student FG probabilities sigmoid(margin): 0.5 (margin 0) and 0.8 (margin log 4); the third token is ignored.
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(4.0)], [3.0, -3.0]]], requires_grad=True)
    teacher = torch.tensor([[0.25, 1.0, 0.9]])
    labels = torch.tensor([[0, 1, IGNORE_INDEX]])
    loss = DistillationLoss()(logits, teacher, labels)
    expected = (math.log(2.0) + -math.log(0.8)) / 2  # -(.25 ln .5 + .75 ln .5) = ln 2; -(1 ln .8)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 2].abs().sum() == 0  # the ignored token takes no part
    # With hard 0/1 teacher targets it is the paper's cross-entropy on those labels.
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 12, 2, generator=generator)
    hard = torch.randint(0, 2, (2, 12), generator=generator)
    assert DistillationLoss()(logits, hard.float(), hard).item() == pytest.approx(
        AccumulativeCrossEntropy()(logits, hard).item(), rel=1e-6)


def test_distillation_loss_is_smallest_at_the_teacher():
    from bavit.core.loss import DistillationLoss

    teacher = torch.tensor([[0.3]])
    labels = torch.zeros(1, 1, dtype=torch.long)
    at_teacher = torch.tensor([[[0.0, math.log(0.3 / 0.7)]]])  # student FG probability 0.3
    entropy = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert DistillationLoss()(at_teacher, teacher, labels).item() == pytest.approx(entropy, rel=1e-6)
    for margin in (-2.0, -0.5, 0.5, 2.0):
        assert DistillationLoss()(torch.tensor([[[0.0, margin]]]), teacher, labels).item() > entropy
    assert DistillationLoss()(torch.zeros(1, 2, 2), torch.ones(1, 2), torch.full((1, 2), IGNORE_INDEX)).item() == 0.0


def test_patch_targets_are_each_patch_normalised_in_row_major_order():
    from bavit.core.loss import patch_targets

    pixels = torch.zeros(1, 3, 4, 4)
    pixels[0, :, 0:2, 2:4] = torch.tensor([1.0, 3.0]).repeat(6)[:12].reshape(3, 2, 2)  # patch 1 (top right)
    targets = patch_targets(pixels, 2)
    assert targets.shape == (1, 4, 12)
    assert torch.equal(targets[0, 0], torch.zeros(12))  # a flat patch normalises to zeros
    # patch 1 holds values 1 and 3 alternately: mean 2, std 1 -> -1 and +1
    assert torch.allclose(targets[0, 1], torch.tensor([-1.0, 1.0]).repeat(6), atol=1e-5)


def test_masked_pixel_loss_by_hand():
    from bavit.core.loss import MaskedPixelLoss

    pixels = torch.zeros(1, 3, 4, 4)  # every target is 0 (flat patches)
    predicted = torch.zeros(1, 4, 12, requires_grad=True)
    with torch.no_grad():
        predicted[0, 1] = 2.0  # masked: |2 - 0| on 12 values
        predicted[0, 2] = 5.0  # visible: not counted
    mask = torch.tensor([[False, True], [False, False]])
    loss = MaskedPixelLoss(2)(predicted, pixels, mask)
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert predicted.grad[0, 2].abs().sum() == 0 and predicted.grad[0, 1].abs().sum() > 0
    both = torch.tensor([[True, True], [False, False]])  # (0 + 2) / 2 per value
    assert MaskedPixelLoss(2)(predicted.detach(), pixels, both).item() == pytest.approx(1.0)
    assert MaskedPixelLoss(2)(predicted.detach(), pixels, torch.zeros(1, 4, dtype=torch.bool)).item() == 0.0
