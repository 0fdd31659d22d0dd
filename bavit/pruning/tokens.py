"""The pruned YOLOS sequence (paper §3.5): which tokens of ``[CLS, N patches, 100 detection tokens]`` a keep mask
keeps, and in which order -- ``[CLS, kept patches (row-major), pads, detection tokens]`` -- with the keep-mask check
and the output type of the patched model (:mod:`bavit.pruning.yolos`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from transformers.models.yolos.modeling_yolos import YolosObjectDetectionOutput


@dataclass
class PrunedYolosOutput(YolosObjectDetectionOutput):
    """YOLOS output plus ``kept_patches`` (``LongTensor [B]``, patch tokens each image kept).

    ``last_hidden_state`` (after the final layer norm) is ``[B, 1 + N + 100, D]`` with zeros at pruned patch
    positions when ``output_full_hidden_state=True`` (paper §3.5), else the compact ``[B, 1 + K_max + 100, D]``
    sequence ``[CLS, kept patches, zero pads, detection tokens]``.
    """

    kept_patches: Optional[torch.LongTensor] = None


def check_keep_mask(keep_mask, batch_size: int, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Validate a keep mask and flatten it to ``bool [B, gh * gw]`` (row-major, like YOLOS' patch order).

    Raises:
        ValueError: wrong shape (the message gives the expected and the given shape) or a float mask.
    """
    mask = torch.as_tensor(np.asarray(keep_mask) if not isinstance(keep_mask, torch.Tensor) else keep_mask)
    expected = (batch_size, grid[0], grid[1])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"keep_mask must have shape [B, H/patch, W/patch] = {list(expected)} for this input, "
            f"got {list(mask.shape)}"
        )
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(f"keep_mask must be boolean (True = keep the patch), got dtype {mask.dtype}")
    return mask.to(device=device).bool().reshape(batch_size, -1)


def sequence_index(keep: torch.Tensor, num_patches: int, num_det: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions in the dense ``[CLS, N patches, det]`` sequence that the pruned sequence takes.

    Args:
        keep: ``bool [B, N]`` flattened keep mask.
        num_patches: ``N``.
        num_det: detection tokens (100).
    Returns:
        ``index`` ``long [B, 1 + K_max + num_det]`` (pads point at CLS) and ``valid`` ``bool`` of the same shape
        (False at pads). Layout per row: CLS, kept patches in row-major order, pads, detection tokens.
    """
    batch, _ = keep.shape
    counts = keep.sum(1)
    k_max = int(counts.max()) if batch else 0
    # Stable sort puts kept patches first, in their original (row-major) order.
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :k_max]
    slot_valid = torch.arange(k_max, device=keep.device)[None] < counts[:, None]
    patch_index = torch.where(slot_valid, order + 1, torch.zeros_like(order))
    cls_index = torch.zeros(batch, 1, dtype=torch.long, device=keep.device)
    det_index = (1 + num_patches + torch.arange(num_det, device=keep.device)).expand(batch, -1)
    index = torch.cat([cls_index, patch_index, det_index], dim=1)
    ones = torch.ones(batch, 1, dtype=torch.bool, device=keep.device)
    valid = torch.cat([ones, slot_valid, ones.expand(batch, num_det)], dim=1)
    return index, valid


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens [B or 1, S, D]`` gathered at ``index [B, S']`` -> ``[B, S', D]``."""
    tokens = tokens.expand(index.shape[0], -1, -1)
    return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))


__all__ = ["PrunedYolosOutput", "check_keep_mask", "sequence_index", "gather_tokens"]
