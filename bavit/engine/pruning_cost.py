"""What pruning cost one image, without ground truth: the dense detector's detections matched to the pruned
detector's, and the AP of the pruned detections against the dense ones.

Matching (:func:`match_detections`): same label and box IoU >= :data:`MATCH_IOU`, greedily, most confident pruned
detection first, each to the unmatched dense detection of its label it overlaps most (COCOeval's own greedy order).
A matched dense detection is *kept* when the IoU is at least :data:`MOVED_IOU`, else *moved*; an unmatched dense
detection is *lost*; an unmatched pruned detection is *new*.

AP against dense (:func:`ap_against_dense`): pycocotools' ``COCOeval`` with the dense detections at or above a
score threshold as the ground truth and the pruned detections as the results, so 1.0 means the pruned detector
found what the dense one found, where it found it (:func:`bavit.engine.cocoeval.evaluate_bbox`).
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from .cocoeval import evaluate_bbox

MATCH_IOU = 0.5  # a pruned detection of the same label overlapping a dense one this much is the same object
MOVED_IOU = 0.9  # below this the matched box has moved


@dataclass(frozen=True)
class DetectionDiff:
    """Dense detections against pruned ones, by index into each list (``dict(box, label, score)`` as the Predictor
    gives them): ``kept`` and ``moved`` are ``(dense, pruned, iou)`` triples."""

    kept: list[tuple[int, int, float]] = field(default_factory=list)
    moved: list[tuple[int, int, float]] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)  # dense detections with no pruned match
    new: list[int] = field(default_factory=list)  # pruned detections with no dense match

    @property
    def dense_count(self) -> int:
        return len(self.kept) + len(self.moved) + len(self.lost)


def match_detections(dense: Sequence[dict], pruned: Sequence[dict], match_iou: float = MATCH_IOU,
                     moved_iou: float = MOVED_IOU) -> DetectionDiff:
    """Match ``pruned`` detections to ``dense`` ones (module docstring); boxes ``(x0, y0, x1, y1)`` in the same
    pixels. Ties in score keep the list order; ties in IoU go to the earlier dense detection."""
    diff = DetectionDiff()
    if not dense or not pruned:
        return DetectionDiff(lost=list(range(len(dense))), new=list(range(len(pruned))))
    ious = box_iou(torch.tensor([d["box"] for d in dense], dtype=torch.float64),
                   torch.tensor([p["box"] for p in pruned], dtype=torch.float64))  # [dense, pruned]
    taken = [False] * len(dense)
    for j in sorted(range(len(pruned)), key=lambda index: -pruned[index]["score"]):
        best, best_iou = None, match_iou
        for i in range(len(dense)):
            iou = float(ious[i, j])
            if not taken[i] and dense[i]["label"] == pruned[j]["label"] and iou >= best_iou and \
                    (best is None or iou > best_iou):
                best, best_iou = i, iou
        if best is None:
            diff.new.append(j)
            continue
        taken[best] = True
        (diff.kept if best_iou >= moved_iou else diff.moved).append((best, j, best_iou))
    diff.lost.extend(i for i in range(len(dense)) if not taken[i])
    diff.kept.sort()
    diff.moved.sort()
    diff.new.sort()
    return diff


def summary_line(diff: DetectionDiff, dense: Sequence[dict]) -> str:
    """One line: "kept 7 of 8 dense detections, 1 lost: a dog at 0.62" (moved and new counted when there are)."""
    total = diff.dense_count
    if total == 0:
        return "the dense detector found nothing here" + (f"; the pruned one {len(diff.new)} new" if diff.new else "")
    parts = [f"kept {len(diff.kept)} of {total} dense detection{'s' if total != 1 else ''}"]
    if diff.moved:
        parts.append(f"{len(diff.moved)} moved")
    if diff.lost:
        named = ", ".join(f"a {dense[i]['label']} at {dense[i]['score']:.2f}" for i in diff.lost)
        parts.append(f"{len(diff.lost)} lost: {named}")
    if diff.new:
        parts.append(f"{len(diff.new)} new")
    return ", ".join(parts)


def ap_against_dense(dense: Sequence[np.ndarray], pruned: Sequence[np.ndarray], image_ids: Sequence[int],
                     min_score: float = 0.5) -> dict[str, float | None]:
    """COCO box AP of ``pruned`` against ``dense`` as the ground truth, over ``image_ids``.

    Args:
        dense, pruned: per image, float ``[n, 7]`` rows ``(image_id, x, y, w, h, score, category_id)``
            (:func:`bavit.engine.cocoeval.result_rows`); the dense rows with ``score >= min_score`` are the ground
            truth, every pruned row is a result.
    Returns:
        :func:`~bavit.engine.cocoeval.evaluate_bbox`'s APs (``None`` where the dense detector found nothing).
    """
    from pycocotools.coco import COCO

    truth = [rows[rows[:, 5] >= min_score] for rows in dense]
    annotations = [{"id": index + 1, "image_id": int(row[0]), "category_id": int(row[6]),
                    "bbox": [float(v) for v in row[1:5]], "area": float(row[3] * row[4]), "iscrowd": 0}
                   for index, row in enumerate(np.concatenate(truth) if truth else np.zeros((0, 7)))]
    categories = sorted({a["category_id"] for a in annotations} | {int(c) for rows in pruned for c in rows[:, 6]})
    gt = COCO()
    gt.dataset = {"images": [{"id": int(i)} for i in image_ids], "annotations": annotations,
                  "categories": [{"id": c} for c in categories]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt.createIndex()
    results = np.concatenate(pruned) if pruned else np.zeros((0, 7))
    return evaluate_bbox(gt, results, image_ids)


__all__ = ["MATCH_IOU", "MOVED_IOU", "DetectionDiff", "ap_against_dense", "match_detections", "summary_line"]
