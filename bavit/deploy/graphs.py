"""Export-ready ``nn.Module`` views of the two models (what ``torch.onnx.export`` traces; no weights copied).

- :class:`BAViTGraph`: pixels ``[B, 3, 384, 384]`` -> FG probability ``[B, 24, 24]`` (BAViT's own ``fg_prob``).
- :class:`PrunedYolosGraph`: pixels ``[1, 3, 512, 512]`` and the kept patch indices ``int64 [K]`` (row-major on the
  32x32 grid, ascending; K from 1 to 1024) -> ``logits [1, 100, C + 1]`` and ``pred_boxes [1, 100, 4]``, the outputs
  of transformers' ``YolosForObjectDetection``. It is the patch's own pruned forward for one image
  (:meth:`bavit.pruning.yolos.PrunedYolosMixin.forward_kept`): tokens are gathered *before* the encoder, so every
  layer runs on ``1 + K + 100`` tokens; at batch 1 no key mask is needed.
- :class:`DenseYolosGraph`: the unmodified model, pixels -> logits, boxes.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.model import BAViT
from ..pruning.yolos import patch_yolos


class BAViTGraph(nn.Module):
    """``pixels [B, 3, S, S] -> fg_prob [B, G, G]`` (``BAViT.fg_prob``)."""

    def __init__(self, model: BAViT):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.fg_prob(pixels)


class DenseYolosGraph(nn.Module):
    """``pixels -> (logits, pred_boxes)`` of an unmodified ``YolosForObjectDetection``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor):
        out = self.model(pixel_values=pixels, keep_mask=None) if hasattr(self.model, "pruned_batch_mode") \
            else self.model(pixel_values=pixels)
        return out.logits, out.pred_boxes


class PrunedYolosGraph(nn.Module):
    """``(pixels [1, 3, H, W], keep_index int64 [K]) -> (logits, pred_boxes)``: YOLOS on the kept patches only, by
    the patch's own :meth:`~bavit.pruning.yolos.PrunedYolosMixin.forward_kept` (no second implementation).

    Args:
        model: a ``YolosForObjectDetection`` (patched here with :func:`bavit.pruning.yolos.patch_yolos` if it is not).
    """

    def __init__(self, model):
        super().__init__()
        self.model = patch_yolos(model)

    def forward(self, pixels: torch.Tensor, keep_index: torch.Tensor):
        return self.model.forward_kept(pixels, keep_index)
