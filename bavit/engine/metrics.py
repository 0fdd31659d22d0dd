"""Token-level FG/BG metrics and the object keep rate, accumulated over images."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.labels import IGNORE_INDEX

SIZES = ("small", "medium", "large")


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
        labels = np.asarray(labels)
        valid = labels != IGNORE_INDEX
        fg = labels == 1
        self.tp += int((predicted & fg & valid).sum())
        self.fp += int((predicted & ~fg & valid).sum())
        self.fn += int((~predicted & fg & valid).sum())
        self.tn += int((~predicted & ~fg & valid).sum())
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

        recall = ratio(self.tp, self.tp + self.fn)
        specificity = ratio(self.tn, self.tn + self.fp)
        total_objects = sum(self.objects.values())
        return {
            "token_accuracy": ratio(self.tp + self.tn, tokens),
            "balanced_accuracy": None if recall is None or specificity is None else (recall + specificity) / 2,
            "fg_precision": ratio(self.tp, self.tp + self.fp),
            "fg_recall": recall,
            "fg_iou": ratio(self.tp, self.tp + self.fp + self.fn),
            "object_keep_rate": ratio(sum(self.kept.values()), total_objects),
            "object_keep_rate_by_size": {s: ratio(self.kept[s], self.objects[s]) for s in SIZES},
            "objects_by_size": dict(self.objects),
            "predicted_fg_fraction": ratio(self.tp + self.fp, tokens),
            "gt_fg_fraction": ratio(self.tp + self.fn, tokens),
            "images": self.images,
            "tokens": tokens,
        }
