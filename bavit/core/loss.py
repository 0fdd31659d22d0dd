"""Accumulative cross-entropy (paper Eq. 3): per-token CE averaged over images and tokens."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .labels import IGNORE_INDEX


class AccumulativeCrossEntropy(nn.Module):
    """Mean per-token cross-entropy over all ``N x M`` tokens of a batch, ignore-labels excluded.

    Args:
        class_weights: optional ``(w_bg, w_fg)``; off by default. With weights the mean is the weighted mean
            (the same normalisation as ``F.cross_entropy(weight=...)``).
        ignore_index: label value of tokens that count neither as FG nor BG (VOC void).
    """

    def __init__(self, class_weights: tuple[float, float] | None = None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weight", weight, persistent=False)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args:
            logits: ``[B, M, 2]`` token logits.
            labels: ``[B, M]`` (or ``[B, H, W]``) long labels in {0, 1, ignore_index}.
        Returns:
            scalar loss; 0 (with grad) when every token is ignored.
        """
        flat_logits = logits.reshape(-1, logits.shape[-1])
        flat_labels = labels.reshape(-1).long()
        if flat_logits.shape[0] != flat_labels.shape[0]:
            raise ValueError(f"{flat_logits.shape[0]} token logits but {flat_labels.shape[0]} labels")
        if not (flat_labels != self.ignore_index).any():
            return flat_logits.sum() * 0.0
        return F.cross_entropy(flat_logits, flat_labels, weight=self.weight, ignore_index=self.ignore_index)


class PatchRankingLoss(nn.Module):
    """Rank each image's patches by their object-pixel fraction (not in the paper; for pruning at a budget).

    A budget keeps an image's k highest-scoring patches, and the object pixels it keeps depend only on the order of
    the scores. This pairwise logistic loss asks, within each image, that a patch with more object pixels score
    higher than one with fewer, weighting each pair by the difference of their fractions:
    ``sum_ij w_ij softplus(m_j - m_i) / sum_ij w_ij`` with ``w_ij = max(f_i - f_j, 0)`` and ``m`` the FG-minus-BG
    logit margin. Pairs with an ignored patch (fraction < 0) are left out.
    """

    def forward(self, logits: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
        """Args:
            logits: ``[B, M, 2]`` token logits.
            fractions: ``[B, M]`` (or ``[B, H, W]``) object fraction per token in [0, 1]; negative = ignore.
        Returns:
            scalar loss; 0 (with grad) when no image has two patches of different fractions.
        """
        margin = logits[..., 1] - logits[..., 0]  # [B, M]
        fraction = fractions.reshape(margin.shape).float()
        valid = fraction >= 0
        weight = (fraction[:, :, None] - fraction[:, None, :]).clamp(min=0.0)  # [B, M, M]: i above j
        weight = weight * (valid[:, :, None] & valid[:, None, :])
        total = weight.sum()
        if total <= 0:
            return margin.sum() * 0.0
        return (weight * F.softplus(margin[:, None, :] - margin[:, :, None])).sum() / total


class DistillationLoss(nn.Module):
    """Soft-target cross-entropy against a teacher's FG probabilities (not in the paper; knowledge distillation).

    Per token, ``-(t log p + (1 - t) log (1 - p))`` with ``t`` the teacher's FG probability and ``p`` the
    student's softmax FG probability, averaged over the tokens whose label is not ignored (as
    :class:`AccumulativeCrossEntropy` averages). Its minimum over the student's logits is the teacher's own
    binary entropy, reached when ``p = t``.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, teacher_prob: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args:
            logits: ``[B, M, 2]`` student token logits.
            teacher_prob: ``[B, M]`` (or ``[B, H, W]``) teacher FG probability per token, in [0, 1].
            labels: ``[B, M]`` (or ``[B, H, W]``) token labels; tokens labelled ``ignore_index`` are left out.
        Returns:
            scalar loss; 0 (with grad) when every token is ignored.
        """
        log_probs = logits.reshape(-1, logits.shape[-1]).log_softmax(-1)
        target = teacher_prob.reshape(-1).to(log_probs.dtype)
        valid = labels.reshape(-1) != self.ignore_index
        if target.shape[0] != log_probs.shape[0] or valid.shape[0] != log_probs.shape[0]:
            raise ValueError(f"{log_probs.shape[0]} token logits but {target.shape[0]} teacher probabilities "
                             f"and {valid.shape[0]} labels")
        if not valid.any():
            return log_probs.sum() * 0.0
        per_token = -(target * log_probs[:, 1] + (1.0 - target) * log_probs[:, 0])
        return per_token[valid].mean()


def patch_targets(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, 3, S, S] -> [B, (S/patch)^2, 3 * patch^2]``: each patch's pixels, row-major patches, normalised per
    patch to zero mean and unit variance (MAE's ``norm_pix_loss`` target)."""
    b, c, h, w = pixels.shape
    grid_h, grid_w = h // patch, w // patch
    patches = pixels.reshape(b, c, grid_h, patch, grid_w, patch).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(b, grid_h * grid_w, c * patch * patch)
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + 1e-6).sqrt()


class MaskedPixelLoss(nn.Module):
    """Masked image modelling (SimMIM, Xie et al., CVPR 2022; not in the paper): the L1 error of the predicted
    pixels of the masked patches, averaged over masked patches and pixel values. Self-supervised pre-training:
    no labels are used."""

    def __init__(self, patch: int):
        super().__init__()
        self.patch = patch

    def forward(self, predicted: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args:
            predicted: ``[B, M, 3 * patch^2]`` the decoder's pixels per token.
            pixels: ``[B, 3, S, S]`` the *unmasked* input (the target, normalised per patch).
            mask: ``[B, M]`` (or ``[B, H, W]``) bool, True = the patch was hidden from the model.
        Returns:
            scalar loss; 0 (with grad) when nothing is masked.
        """
        target = patch_targets(pixels, self.patch)
        hidden = mask.reshape(target.shape[:2])
        if predicted.shape != target.shape:
            raise ValueError(f"predicted pixels {tuple(predicted.shape)} but targets {tuple(target.shape)}")
        if not hidden.any():
            return predicted.sum() * 0.0
        return (predicted - target).abs()[hidden].mean()
