"""The one keep-mask rule (paper §3.5 and appendix): FG probabilities -> FG grid -> CCA -> YOLOS keep mask.

``[.., G, G]`` BAViT FG probabilities (``G = 24`` at 384 px) become a boolean FG grid by a probability threshold or
by keeping the top-k cells; CCA grows that grid on BAViT's own grid; the result is resampled to the detector's
patch grid (``32x32`` for YOLOS at 512 px), which is the keep mask the pruned YOLOS computes. The Predictor, the
latency bench, the mAP harness, sparse fine-tuning and the app all call :func:`keep_mask_from_probs`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..core.cca import cca, resample_grid
from .settings import DEFAULT_CCA_STEPS, DEFAULT_THRESHOLD, PruningSettings, cca_steps_value


@dataclass(frozen=True)
class KeepMask:
    """The three grids of one selection; ``[G, G]`` / ``[Y, Y]`` or batched ``[B, ...]``, True = FG (kept)."""

    grid_raw: torch.Tensor  # bool [.., G, G]: selected from BAViT's probabilities
    grid_cca: torch.Tensor  # bool [.., G, G]: after CCA (a superset of grid_raw)
    keep_mask: torch.Tensor  # bool [.., Y, Y]: the detector patches to compute

    @property
    def kept_patches(self) -> torch.Tensor:
        """``long [B]`` (or a scalar for one image): detector patches kept."""
        return self.keep_mask.flatten(-2).sum(-1)


def select_patches(fg_prob: torch.Tensor, threshold: Optional[float] = None,
                   keep_ratio: Optional[float] = None) -> torch.Tensor:
    """FG grid from probabilities: ``prob >= threshold``, or the top ``round(keep_ratio * cells)`` cells per image.

    Args:
        fg_prob: ``[G, G]`` or ``[B, G, G]`` FG probabilities.
        threshold: probability in [0, 1] (default :data:`DEFAULT_THRESHOLD` when ``keep_ratio`` is not given).
        keep_ratio: fraction (0, 1] of cells to keep, highest probability first (ties: row-major order).
    Returns:
        bool grid of the same shape.
    Raises:
        ConfigError: both given, or a value out of range.
    """
    setting = PruningSettings(threshold=threshold, keep_ratio=keep_ratio)  # validated in bavit.pruning.settings
    if setting.keep_ratio is None:
        return fg_prob >= setting.threshold
    keep_ratio = setting.keep_ratio
    flat = fg_prob.reshape(-1, fg_prob.shape[-2] * fg_prob.shape[-1])
    count = max(1, round(keep_ratio * flat.shape[1]))
    order = torch.sort(-flat, dim=1, stable=True).indices[:, :count]
    grid = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    return grid.reshape(fg_prob.shape)


def keep_mask_from_probs(fg_prob: torch.Tensor, *, threshold: Optional[float] = None,
                         keep_ratio: Optional[float] = None, cca_steps: int = DEFAULT_CCA_STEPS,
                         grid: int = 32, resample: str = "nearest") -> KeepMask:
    """The rule: select (threshold or top-k), CCA on BAViT's grid, resample to the detector's ``grid x grid``.

    Args:
        fg_prob: ``[G, G]`` or ``[B, G, G]`` FG probabilities (a tensor or array).
        threshold / keep_ratio: see :func:`select_patches` (threshold 0.5 when neither is given).
        cca_steps: CCA iterations (0 = none).
        grid: the detector's patch grid side (``YOLOS_SIZE // patch_size``, 32 for YOLOS-tiny at 512 px).
        resample: ``"nearest"`` (cell centres) or ``"any"`` (never loses FG area), see ``resample_grid``.
    """
    probs = torch.as_tensor(fg_prob)
    grid_raw = select_patches(probs, threshold, keep_ratio)
    grid_cca = cca(grid_raw, steps=cca_steps_value(cca_steps))
    return KeepMask(grid_raw, grid_cca, resample_grid(grid_cca, (grid, grid), mode=resample))


def closest_index(value: Callable[[int], float], low: int, high: int, target: float, ties: str = "low") -> int:
    """The index in ``[low, high]`` whose value is closest to ``target``, for a ``value`` that never falls as the
    index grows: a binary search finds the first index reaching ``target``, and the one before wins when it is
    closer (on a tie: the lower index with ``ties="low"``, the higher with ``"high"``)."""
    start = low
    while low < high:
        middle = (low + high) // 2
        if value(middle) >= target:
            high = middle
        else:
            low = middle + 1
    if low > start:
        before, at = abs(value(low - 1) - target), abs(value(low) - target)
        if before < at or (before == at and ties == "low"):
            low -= 1
    return low


def keep_ratio_for_count(fg_prob: torch.Tensor, kept: int, grid: int, cca_steps: int = DEFAULT_CCA_STEPS,
                         resample: str = "nearest") -> float:
    """The BAViT keep ratio whose keep mask (top-k, CCA, resample) keeps the count closest to ``kept`` patches.

    The kept count never falls as k grows (top-k sets are nested; CCA and resampling are monotone), so
    :func:`closest_index` searches over k.

    Args:
        fg_prob: ``[G, G]`` FG probabilities of one image.
        kept: target number of the ``grid x grid`` detector patches.
    """
    cells = fg_prob.numel()

    def count(k: int) -> int:
        return int(keep_mask_from_probs(fg_prob, keep_ratio=k / cells, cca_steps=cca_steps, grid=grid,
                                        resample=resample).keep_mask.sum())

    low = closest_index(count, 1, cells, kept, ties="high")  # a tie keeps more patches
    return low / cells


__all__ = ["KeepMask", "select_patches", "keep_mask_from_probs", "keep_ratio_for_count", "closest_index",
           "DEFAULT_THRESHOLD", "DEFAULT_CCA_STEPS"]
