"""Token-level FG/BG metrics and the object keep rate, accumulated over images.

The one confusion count of the project: :func:`confusion_cells` classifies each grid cell against its label,
:func:`confusion_counts` counts those classes and :func:`rates` turns counts into ratios. Evaluation
(:class:`TokenMetrics`), the app's per-image GT statistics and its GT-vs-prediction overlay all use them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.labels import IGNORE_INDEX
from ..data.records import SIZE_BINS

SIZES = tuple(name for name, _, _ in SIZE_BINS)  # object sizes, as COCO bins them
# Cell classes of a prediction against its labels.
TN, TP, FP, FN, IGNORED = 0, 1, 2, 3, 4


def confusion_cells(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-cell class TP / FP / FN / TN of a predicted FG grid, IGNORED where the label is ``IGNORE_INDEX``.

    Args:
        predicted: ``[..., G, G]`` bool, True = FG (kept).
        labels: the same shape, int in {0, 1, IGNORE_INDEX}, or bool (True = FG).
    Returns:
        int64 array of the same shape with values in {TN, TP, FP, FN, IGNORED}.
    """
    predicted = np.asarray(predicted, dtype=bool)
    labels = np.asarray(labels)
    if labels.shape != predicted.shape:
        raise ValueError(f"GT grid {labels.shape} and predicted grid {predicted.shape} differ in shape")
    fg = labels if labels.dtype == bool else labels == 1
    cells = np.where(fg, np.where(predicted, TP, FN), np.where(predicted, FP, TN)).astype(np.int64)
    if labels.dtype != bool:
        cells[labels == IGNORE_INDEX] = IGNORED
    return cells


def confusion_counts(predicted: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """``{"tp", "fp", "fn", "tn"}`` over the cells that are not ignored (see :func:`confusion_cells`)."""
    counts = np.bincount(confusion_cells(predicted, labels).ravel(), minlength=5)
    return {"tp": int(counts[TP]), "fp": int(counts[FP]), "fn": int(counts[FN]), "tn": int(counts[TN])}


def rates(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | None]:
    """Token accuracy, balanced accuracy, FG precision, recall and IoU (fractions; ``None`` when undefined)."""

    def ratio(num: float, den: float):
        return num / den if den else None

    recall = ratio(tp, tp + fn)
    specificity = ratio(tn, tn + fp)
    return {
        "token_accuracy": ratio(tp + tn, tp + fp + fn + tn),
        "balanced_accuracy": None if recall is None or specificity is None else (recall + specificity) / 2,
        "fg_precision": ratio(tp, tp + fp),
        "fg_recall": recall,
        "fg_iou": ratio(tp, tp + fp + fn),
    }


@dataclass
class TokenMetrics:
    """Accumulates a confusion matrix over valid tokens and per-instance keep decisions.

    ``object_keep_rate``: fraction of (non-crowd) GT instances that keep at least ``keep_frac`` of their own FG
    patches in the prediction, also broken down by COCO size (small < 32², medium < 96², large).
    """

    keep_frac: float = 0.5
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    images: int = 0
    kept: dict = field(default_factory=lambda: {s: 0 for s in SIZES})
    objects: dict = field(default_factory=lambda: {s: 0 for s in SIZES})

    def update(self, predicted: np.ndarray, labels: np.ndarray, instances=()) -> None:
        """Args:
            predicted: ``[G, G]`` bool prediction (FG = True).
            labels: ``[G, G]`` int labels in {0, 1, IGNORE_INDEX}.
            instances: ``(Instance, patches [G, G] bool)`` pairs from :meth:`Record.instance_patches`.
        """
        predicted = np.asarray(predicted, dtype=bool)
        counts = confusion_counts(predicted, labels)
        self.tp += counts["tp"]
        self.fp += counts["fp"]
        self.fn += counts["fn"]
        self.tn += counts["tn"]
        self.images += 1
        for instance, patches in instances:
            size = instance.size
            self.objects[size] += 1
            if (predicted & patches).sum() >= self.keep_frac * patches.sum():
                self.kept[size] += 1

    def summary(self) -> dict:
        tokens = self.tp + self.fp + self.fn + self.tn

        def ratio(num: float, den: float):
            return num / den if den else None

        total_objects = sum(self.objects.values())
        return {
            **rates(self.tp, self.fp, self.fn, self.tn),
            "object_keep_rate": ratio(sum(self.kept.values()), total_objects),
            "object_keep_rate_by_size": {s: ratio(self.kept[s], self.objects[s]) for s in SIZES},
            "objects_by_size": dict(self.objects),
            "predicted_fg_fraction": ratio(self.tp + self.fp, tokens),
            "gt_fg_fraction": ratio(self.tp + self.fn, tokens),
            "images": self.images,
            "tokens": tokens,
        }
