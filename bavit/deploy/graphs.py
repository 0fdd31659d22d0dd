"""Export-ready ``nn.Module`` views of the two models (what ``torch.onnx.export`` traces; no weights copied).

- :class:`BAViTGraph`: pixels ``[B, 3, 384, 384]`` -> FG probability ``[B, 24, 24]`` (BAViT's own ``fg_prob``).
- :class:`PrunedYolosGraph`: pixels ``[1, 3, 512, 512]`` and the kept patch indices ``int64 [K]`` (row-major on the
  32x32 grid, any order; K from 1 to 1024) -> ``logits [1, 100, C + 1]`` and ``pred_boxes [1, 100, 4]``, the outputs
  of transformers' ``YolosForObjectDetection``. It is the pruned forward of :mod:`bavit.pruning.yolos` for one image:
  tokens are gathered *before* the encoder, so every layer runs on ``1 + K + 100`` tokens. At batch 1 every row
  keeps the same count, so no key mask is needed. The position embeddings of the fixed input size are computed
  once here (transformers interpolates them from the pre-training size on every call) and gathered like the tokens.
- :class:`DenseYolosGraph`: the unmodified model, pixels -> logits, boxes.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.model import BAViT


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
    """``(pixels [1, 3, H, W], keep_index int64 [K]) -> (logits, pred_boxes)``: YOLOS on the kept patches only.

    Args:
        model: a ``YolosForObjectDetection`` (patched or not; only its submodules are used).
        image_size: ``(H, W)`` of the input the graph is made for (512x512 here): its position embeddings are fixed.
    """

    def __init__(self, model, image_size: tuple[int, int]):
        super().__init__()
        vit = model.vit
        self.config = model.config
        self.patch_embeddings = vit.embeddings.patch_embeddings
        self.layers = vit.encoder.layer
        self.layernorm = vit.layernorm
        self.class_labels_classifier = model.class_labels_classifier
        self.bbox_predictor = model.bbox_predictor
        num_det = self.config.num_detection_tokens
        with torch.no_grad():
            position = vit.embeddings.interpolation(vit.embeddings.position_embeddings, image_size)[0]  # [S, D]
            self.register_buffer("cls_token", (vit.embeddings.cls_token[0] + position[:1]).clone(), persistent=False)
            self.register_buffer("det_tokens", (vit.embeddings.detection_tokens[0] + position[-num_det:]).clone(),
                                 persistent=False)
            self.register_buffer("patch_position", position[1:-num_det].clone(), persistent=False)  # [N, D]
            mid = None
            if self.config.use_mid_position_embeddings:
                encoder = vit.encoder
                mid = encoder.interpolation(encoder.mid_position_embeddings, image_size)[:, 0].clone()  # [L-1, S, D]
        self.register_buffer("mid_position", mid, persistent=False)

    def forward(self, pixels: torch.Tensor, keep_index: torch.Tensor):
        num_det = self.config.num_detection_tokens
        patches = self.patch_embeddings(pixels)[0]  # [N, D]
        kept = patches.index_select(0, keep_index) + self.patch_position.index_select(0, keep_index)
        hidden = torch.cat([self.cls_token, kept, self.det_tokens], dim=0)[None]  # [1, 1 + K + det, D]
        mid_index = None
        if self.mid_position is not None:
            total = self.mid_position.shape[1]
            mid_index = torch.cat([keep_index.new_zeros(1), keep_index + 1,
                                   torch.arange(total - num_det, total, device=keep_index.device)])
        for depth, layer in enumerate(self.layers):
            hidden = layer(hidden)
            if self.mid_position is not None and depth < len(self.layers) - 1:
                hidden = hidden + self.mid_position[depth].index_select(0, mid_index)[None]
        hidden = self.layernorm(hidden)
        detection = hidden[:, -num_det:]
        return self.class_labels_classifier(detection), self.bbox_predictor(detection).sigmoid()
