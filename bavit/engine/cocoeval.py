"""COCO box AP by pycocotools' ``COCOeval`` (wrapped, not reimplemented), and the conversion of one image's
detections (``xyxy`` pixel boxes, detector label ids) to COCO results (``[x, y, w, h]``, category ids)."""
from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np
import torch

from ..box_ops import box_xyxy_to_xywh

# COCOeval.stats order (bbox): AP, AP50, AP75, AP_small, AP_medium, AP_large, AR1, AR10, AR100, ...
STAT_NAMES = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


def evaluate_bbox(coco_gt, results: list[dict] | np.ndarray, image_ids: Sequence[int]) -> dict[str, float | None]:
    """COCO box AP of ``results`` on ``image_ids`` (pycocotools ``loadRes`` + ``COCOeval(gt, dt, "bbox")``).

    Args:
        coco_gt: pycocotools ``COCO`` ground truth.
        results: COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h] (pixels), "score"}``, or
            the same as a float ``[N, 7]`` array of rows ``(image_id, x, y, w, h, score, category_id)`` (pycocotools'
            ``loadNumpyAnnotations`` layout; 100 detections x 5000 images fit in 28 MB that way).
        image_ids: the images that were run (others do not count as misses).
    Returns:
        ``{"mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"}`` as fractions in [0, 1]; ``None`` where
        the images have no ground truth in that size range (COCOeval's -1). No detections at all -> 0.
    """
    from pycocotools.cocoeval import COCOeval

    if len(results) == 0:
        # loadRes cannot take an empty list; with nothing detected every AP with ground truth is 0.
        has_gt = bool(coco_gt.getAnnIds(imgIds=list(image_ids), iscrowd=False))
        return {name: 0.0 if has_gt else None for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (float(value) if value >= 0 else None) for name, value in zip(STAT_NAMES, evaluator.stats)}


def to_coco_results(image_id: int, scores: torch.Tensor, labels: torch.Tensor, boxes_xyxy: torch.Tensor,
                    label_map: dict[int, int]) -> list[dict]:
    """One image's detections as COCO result dicts.

    Args:
        scores: ``[Q]`` class probabilities; labels: ``[Q]`` detector label ids;
        boxes_xyxy: ``[Q, 4]`` ``(x0, y0, x1, y1)`` in original image pixels.
        label_map: detector label id -> COCO category id; unmapped labels ("N/A") are dropped.
    """
    out = []
    boxes_xywh = box_xyxy_to_xywh(boxes_xyxy.double())  # float64, as Python's own subtraction of the floats
    for score, label, box in zip(scores.tolist(), labels.tolist(), boxes_xywh.tolist()):
        if label not in label_map:
            continue
        out.append({"image_id": int(image_id), "category_id": int(label_map[label]), "bbox": box,
                    "score": float(score)})
    return out


def result_rows(image_id: int, scores: torch.Tensor, labels: torch.Tensor, boxes_xyxy: torch.Tensor,
                 label_map: dict[int, int]) -> np.ndarray:
    """:func:`to_coco_results` as a float64 ``[n, 7]`` array ``(image_id, x, y, w, h, score, category_id)``."""
    found = to_coco_results(image_id, scores, labels, boxes_xyxy, label_map)
    return np.array([[r["image_id"], *r["bbox"], r["score"], r["category_id"]] for r in found],
                    dtype=np.float64).reshape(-1, 7)


__all__ = ["STAT_NAMES", "evaluate_bbox", "to_coco_results", "result_rows"]
