"""The one keep-mask rule (paper §3.5 and appendix): FG probabilities -> FG grid -> CCA -> YOLOS keep mask.

``[.., G, G]`` BAViT FG probabilities (``G = 16`` at the shipped 256 px) become a boolean FG grid by a probability
threshold or by keeping the top-k cells (k given, or chosen per image for a target sparsity); CCA grows that grid
on BAViT's own grid; the result is resampled to the detector's patch grid (``32x32`` for YOLOS at 512 px), which is
the keep mask the pruned YOLOS computes. The Predictor, the benchmarks, the evaluations and sparse fine-tuning all
call :func:`keep_mask_from_probs`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..core.cca import cca, resample_grid
from ..errors import ConfigError
from .settings import DEFAULT_CCA_STEPS, PruningSettings


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


def kept_count(sparsity: float, grid: int) -> int:
    """The detector patches of a ``grid x grid`` grid kept at ``sparsity`` (the fraction pruned), rounded: the one
    conversion from a sparsity to a kept count."""
    return round(grid * grid * (1.0 - sparsity))


def top_k(fg_prob: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """The ``counts[b]`` most probable cells of each image ``b`` of ``[B, G, G]`` (ties: row-major order)."""
    flat = fg_prob.reshape(-1, fg_prob.shape[-2] * fg_prob.shape[-1])
    order = torch.sort(-flat, dim=1, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
    return (rank < torch.tensor(counts)[:, None]).reshape(fg_prob.shape)


def _grow(grid_raw: torch.Tensor, cca_steps: int, grid: int, resample: str) -> KeepMask:
    grid_cca = cca(grid_raw, steps=cca_steps)
    return KeepMask(grid_raw, grid_cca, resample_grid(grid_cca, (grid, grid), mode=resample))


def top_k_for_kept(fg_prob: torch.Tensor, kept: int, grid: int, cca_steps: int = DEFAULT_CCA_STEPS,
                   resample: str = "nearest") -> int:
    """The number k of BAViT cells whose keep mask (top-k, CCA, resample) keeps the count closest to ``kept`` of the
    ``grid x grid`` detector patches, for one image's ``[G, G]`` probabilities (:func:`top_k_counts` of one image).

    The kept count never falls as k grows (top-k sets are nested; CCA and resampling are monotone), so a binary
    search over k finds it, as :func:`closest_index` searches; a tie keeps more patches.
    """
    return top_k_counts(torch.as_tensor(fg_prob)[None], kept, grid, cca_steps, resample)[0]


def top_k_counts(fg_prob: torch.Tensor, kept: int, grid: int, cca_steps: int = DEFAULT_CCA_STEPS,
                 resample: str = "nearest") -> list[int]:
    """:func:`top_k_for_kept` for every image of ``[B, G, G]`` probabilities at once: :func:`closest_index`'s
    binary search over k in ``1 .. G * G`` (``ties="high"``), each of its steps one batched run of the rule for all
    images, so a batch costs about ``log2(G * G) + 2`` runs instead of that many per image."""
    probs = torch.as_tensor(fg_prob)
    if probs.shape[0] == 0:
        return []

    def count(k: torch.Tensor) -> torch.Tensor:
        return _grow(top_k(probs, k.tolist()), cca_steps, grid, resample).keep_mask.flatten(1).sum(1)

    low = torch.ones(probs.shape[0], dtype=torch.long)
    high = torch.full_like(low, probs.shape[1] * probs.shape[2])
    while bool((low < high).any()):  # each image's own search: an image whose range has closed stays as it is
        searching, middle = low < high, (low + high) // 2
        reaches = count(middle) >= kept
        high = torch.where(searching & reaches, middle, high)
        low = torch.where(searching & ~reaches, middle + 1, low)
    before = (count((low - 1).clamp(min=1)) - kept).abs()
    at = (count(low) - kept).abs()
    return torch.where((low > 1) & (before < at), low - 1, low).tolist()


def keep_mask_from_probs(fg_prob: torch.Tensor, settings: PruningSettings, *, grid: int = 32,
                         resample: str = "nearest") -> KeepMask:
    """The rule: select BAViT's cells (threshold or top-k), CCA on BAViT's grid, resample to the detector's grid.

    Args:
        fg_prob: ``[G, G]`` or ``[B, G, G]`` FG probabilities (a tensor or array).
        settings: the selection and CCA steps; a calibrated ``sparsity`` must have been resolved to its threshold
            first (:meth:`bavit.predictor.Predictor.select` does). ``threshold`` keeps ``prob >= threshold``;
            ``keep_ratio`` keeps the top ``round(keep_ratio * G * G)`` cells of each image; ``image_sparsity`` keeps
            each image's top-k with k from :func:`top_k_for_kept` at :func:`kept_count` (all images at once:
            :func:`top_k_counts`).
        grid: the detector's patch grid side (``YOLOS_SIZE // patch_size``, 32 for YOLOS-tiny at 512 px).
        resample: ``"nearest"`` (cell centres) or ``"any"`` (never loses FG area), see ``resample_grid``.
    Raises:
        ConfigError: a calibrated ``sparsity`` (it needs a calibration to become a threshold).
    """
    probs = torch.as_tensor(fg_prob)
    if settings.sparsity is not None:
        raise ConfigError("a calibrated mean sparsity needs the checkpoint's calibration to become a threshold: "
                          "use Predictor.select, or give the threshold")
    if not settings.top_k:
        return _grow(probs >= settings.threshold, settings.cca_steps, grid, resample)
    batch = probs.reshape(-1, *probs.shape[-2:])
    cells = batch.shape[1] * batch.shape[2]
    if settings.keep_ratio is not None:
        counts = [max(1, round(settings.keep_ratio * cells))] * batch.shape[0]
    else:
        target = kept_count(settings.image_sparsity, grid)
        counts = top_k_counts(batch, target, grid, settings.cca_steps, resample)
    return _grow(top_k(batch, counts).reshape(probs.shape), settings.cca_steps, grid, resample)


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


__all__ = ["KeepMask", "closest_index", "keep_mask_from_probs", "kept_count", "top_k", "top_k_counts", "top_k_for_kept"]
