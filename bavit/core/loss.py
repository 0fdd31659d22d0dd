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
