"""Box conversions: the one place where a box changes format (after DETR's ``util/box_ops.py``).

Three formats meet here, all ``[N, 4]`` (any leading shape ``[..., 4]`` works):

- ``xywh``: COCO's ``bbox`` ``(x, y, w, h)``, top-left corner and size, in image pixels;
- ``xyxy``: ``(x0, y0, x1, y1)``, corners, in image pixels (what ``YolosImageProcessor.post_process_object_detection``
  returns, what :func:`bavit.core.labels.labels_from_boxes` and the app take);
- ``cxcywh``: ``(cx, cy, w, h)``, centre and size; YOLOS / DETR predict and train on it normalised to [0, 1] by the
  image width and height (:func:`box_normalize`).

Every function keeps its input's dtype and device. Plain Python numbers (e.g. COCO ``bbox`` lists) are read as
float64 ``[N, 4]``, so the arithmetic is Python's own, to the last bit.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

Boxes = torch.Tensor | Sequence[Sequence[float]]  # [N, 4]: a tensor, or boxes of 4 Python numbers each


def as_boxes(boxes: Boxes) -> torch.Tensor:
    """``boxes`` as a tensor: a tensor unchanged, a sequence of 4-number boxes as float64 ``[N, 4]`` (``[0, 4]``
    when empty)."""
    if isinstance(boxes, torch.Tensor):
        return boxes
    rows = [[float(v) for v in box] for box in boxes]
    if any(len(row) != 4 for row in rows):
        raise ValueError(f"a box is 4 numbers; got {next(row for row in rows if len(row) != 4)}")
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)


def box_xywh_to_xyxy(boxes: Boxes) -> torch.Tensor:
    """``[N, 4]`` ``(x, y, w, h)`` -> ``[N, 4]`` ``(x0, y0, x1, y1)``, same units (COCO pixels)."""
    x, y, w, h = as_boxes(boxes).unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def box_xyxy_to_xywh(boxes: Boxes) -> torch.Tensor:
    """``[N, 4]`` ``(x0, y0, x1, y1)`` -> ``[N, 4]`` ``(x, y, w, h)``, same units (COCO results' ``bbox``)."""
    x0, y0, x1, y1 = as_boxes(boxes).unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def box_xyxy_to_cxcywh(boxes: Boxes) -> torch.Tensor:
    """``[N, 4]`` ``(x0, y0, x1, y1)`` -> ``[N, 4]`` ``(cx, cy, w, h)``, same units."""
    x0, y0, x1, y1 = as_boxes(boxes).unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_cxcywh_to_xyxy(boxes: Boxes) -> torch.Tensor:
    """``[N, 4]`` ``(cx, cy, w, h)`` -> ``[N, 4]`` ``(x0, y0, x1, y1)``, same units (YOLOS ``pred_boxes`` -> corners)."""
    cx, cy, w, h = as_boxes(boxes).unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_clip_xyxy(boxes: Boxes, image_size: tuple[int, int]) -> torch.Tensor:
    """``[N, 4]`` ``(x0, y0, x1, y1)`` pixels clipped to the image: x into ``[0, width]``, y into ``[0, height]``.

    Args:
        image_size: ``(width, height)`` in pixels.
    """
    width, height = image_size
    x0, y0, x1, y1 = as_boxes(boxes).unbind(-1)
    return torch.stack([x0.clamp(0, width), y0.clamp(0, height), x1.clamp(0, width), y1.clamp(0, height)], dim=-1)


def box_normalize(boxes: Boxes, image_size: tuple[int, int]) -> torch.Tensor:
    """``[N, 4]`` boxes in pixels (any of the formats above) divided by ``(width, height, width, height)``: the
    [0, 1] units YOLOS / DETR use.

    Args:
        image_size: ``(width, height)`` in pixels.
    """
    boxes = as_boxes(boxes)
    width, height = image_size
    scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return boxes / scale
