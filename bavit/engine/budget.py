"""Pruning quality at a compute budget: what each sparsity level loses, against baselines (the product's number).

A user picks a sparsity, which is a speed; what it costs is what pruning removes from the detector's input. For
each target sparsity (fraction of the ``G x G`` YOLOS patches pruned, 32x32 at 512 px) and each method, with the
GT instance masks laid over the detector grid the way the square resize lays them (exact area fractions):

- ``pixel_recall``: non-crowd object pixels inside kept patches / all non-crowd object pixels, pooled over the set
  (every image counts at the detector's 512x512 input size);
- ``keep_rate``: the share of non-crowd instances that keep at least half of their pixels, and the same for COCO
  ``small`` / ``medium`` / ``large`` instances (``keep_rate_small`` ...);
- ``sparsity_mean`` / ``sparsity_p10`` / ``sparsity_p90``: the per-image sparsity's mean and spread.

Methods (all but ``oracle`` and ``random`` go through the pipeline's keep-mask rule,
:func:`bavit.pruning.keep_mask.keep_mask_from_probs`, from a ``[G, G]`` score grid to the detector grid):

- ``bavit_topk``: per image, the BAViT keep ratio whose mask (no CCA) comes closest to the level's patch count;
- ``bavit_calibrated``: one threshold for every image, from the checkpoint's calibration (no CCA), as the paper's
  Table 2 does: each image's sparsity follows its content and the level is the mean;
- ``bavit_calibrated_cca``: the same with CCA (the threshold calibrated for the level's mean *after* CCA);
- ``centre``: the per-cell FG frequency of the training labels (stored in the checkpoint) as the score of every
  image, top-k per image;
- ``random``: random scores, top-k per image (seeded);
- ``oracle``: each detector patch's GT object fraction as its score, top-k per image (an upper bound for top-k).

:func:`format_budget` renders the result as a markdown table, :func:`plot_budget` as a recall-vs-sparsity plot.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..core.labels import area_fractions
from ..data.records import Record
from ..files import atomic_path
from ..pruning.calibration import Calibration
from ..pruning.keep_mask import keep_mask_from_probs, kept_count, top_k
from ..pruning.settings import DEFAULT_CCA_STEPS, PruningSettings
from .metrics import SIZES

DEFAULT_LEVELS = (0.29, 0.35, 0.40, 0.46)  # the paper's Table 2 sparsity levels
PLOT_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 18))  # 5% .. 85%, for the recall-vs-sparsity curve
METHODS = ("bavit_topk", "bavit_calibrated", "bavit_calibrated_cca", "centre", "random", "oracle")
KEEP_FRACTION = 0.5  # an instance is kept when at least this share of its pixels is in kept patches


@dataclass
class ImageObjects:
    """One image's non-crowd objects on the detector grid, in units of one patch's area.

    Attributes:
        union: ``float [G, G]``: area of the union of the non-crowd instances in each patch (0..1).
        instances: per non-crowd instance, ``(area [G, G], COCO size name)``.
    """

    union: np.ndarray
    instances: list[tuple[np.ndarray, str]] = field(default_factory=list)


def image_objects(record: Record, grid: int) -> ImageObjects:
    """The non-crowd objects of ``record`` on a ``grid x grid`` detector grid (exact area fractions)."""
    union_mask = np.zeros((record.height, record.width), dtype=bool)
    instances = []
    for instance in record.instances:
        if instance.iscrowd or instance.mask is None:
            continue
        mask = instance.mask()
        union_mask |= mask
        area = area_fractions(mask, (grid, grid))
        if area.sum() > 0:
            instances.append((area, instance.size))
    return ImageObjects(area_fractions(union_mask, (grid, grid)), instances)


@dataclass
class BudgetMetrics:
    """Accumulates pixel recall, instance keep rate and per-image sparsity of keep masks over images."""

    object_area: float = 0.0
    kept_area: float = 0.0
    kept: dict = field(default_factory=lambda: {s: 0 for s in SIZES})
    objects: dict = field(default_factory=lambda: {s: 0 for s in SIZES})
    sparsity: list = field(default_factory=list)
    kept_patches: list = field(default_factory=list)  # per image: detector patches kept (int)

    def update(self, keep_mask: np.ndarray, objects: ImageObjects) -> None:
        """Args:
            keep_mask: ``bool [G, G]``, True = the detector computes the patch.
            objects: the image's objects on the same grid.
        """
        keep = np.asarray(keep_mask, dtype=bool)
        self.object_area += float(objects.union.sum())
        self.kept_area += float(objects.union[keep].sum())
        for area, size in objects.instances:
            self.objects[size] += 1
            if area[keep].sum() >= KEEP_FRACTION * area.sum() - 1e-9:
                self.kept[size] += 1
        self.sparsity.append(1.0 - keep.mean())
        self.kept_patches.append(int(keep.sum()))

    def summary(self) -> dict[str, float | None]:
        def ratio(num: float, den: float) -> float | None:
            return num / den if den else None

        sparsity = np.asarray(self.sparsity, dtype=np.float64)
        return {
            "pixel_recall": ratio(self.kept_area, self.object_area),
            "keep_rate": ratio(sum(self.kept.values()), sum(self.objects.values())),
            **{f"keep_rate_{size}": ratio(self.kept[size], self.objects[size]) for size in SIZES},
            "sparsity_mean": float(sparsity.mean()) if sparsity.size else None,
            "sparsity_p10": float(np.percentile(sparsity, 10)) if sparsity.size else None,
            "sparsity_p90": float(np.percentile(sparsity, 90)) if sparsity.size else None,
            "images": len(self.sparsity),
            "instances": sum(self.objects.values()),
        }


def top_k_mask(scores: np.ndarray, count: int) -> np.ndarray:
    """``bool [G, G]``: the ``count`` highest-scoring cells (ties: row-major order), by the rule's own top-k."""
    return top_k(torch.as_tensor(np.asarray(scores, dtype=np.float64))[None], [count])[0].numpy()


def _rule_top_k(scores: torch.Tensor, level: float, grid: int, resample: str) -> np.ndarray:
    """The keep-mask rule (no CCA) holding this image at sparsity ``level`` as nearly as its grid allows."""
    settings = PruningSettings(image_sparsity=level, cca_steps=0)
    return keep_mask_from_probs(scores, settings, grid=grid, resample=resample).keep_mask.numpy()


def method_masks(fg_prob: np.ndarray, objects: Sequence[ImageObjects], level: float, grid: int,
                 calibration: Calibration | None, prior: np.ndarray | None, cca_steps: int = DEFAULT_CCA_STEPS,
                 resample: str = "nearest", seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Every method's keep masks (``bool [G, G]`` per image) at one sparsity level.

    Args:
        fg_prob: ``[N, 24, 24]`` BAViT FG probabilities.
        objects: the images' objects (for the oracle).
        level: target sparsity (fraction).
        calibration: the checkpoint's calibration (``None``: the calibrated methods are left out).
        prior: ``[G, G]`` training FG frequency (``None``: ``centre`` is left out).
    """
    count = kept_count(level, grid)
    probs = (fg_prob.detach().float().clone() if isinstance(fg_prob, torch.Tensor)
             else torch.tensor(np.asarray(fg_prob), dtype=torch.float32))
    masks: dict[str, list[np.ndarray]] = {
        "bavit_topk": [_rule_top_k(p, level, grid, resample) for p in probs],
    }
    if calibration is not None:
        for name, steps in (("bavit_calibrated", 0), ("bavit_calibrated_cca", cca_steps)):
            threshold = calibration.threshold(level, steps)
            settings = PruningSettings(threshold=threshold, cca_steps=steps)
            masks[name] = list(keep_mask_from_probs(probs, settings, grid=grid, resample=resample).keep_mask.numpy())
    if prior is not None:
        centre = _rule_top_k(torch.as_tensor(np.asarray(prior), dtype=torch.float32), level, grid, resample)
        masks["centre"] = [centre] * len(probs)
    rng = np.random.default_rng(seed)
    masks["random"] = [top_k_mask(rng.random((grid, grid)), count) for _ in range(len(probs))]
    masks["oracle"] = [top_k_mask(obj.union, count) for obj in objects]
    return masks


def evaluate_budget(fg_prob: np.ndarray, records: Sequence[Record], levels: Sequence[float] = DEFAULT_LEVELS,
                    calibration: Calibration | None = None, prior: np.ndarray | None = None, grid: int = 32,
                    cca_steps: int = DEFAULT_CCA_STEPS, resample: str = "nearest", seed: int = 0,
                    progress: Callable[[str], None] | None = None) -> dict[str, dict[str, dict]]:
    """``{f"{level:.2f}": {method: BudgetMetrics.summary()}}`` for every level and method (see module docstring).

    Args:
        fg_prob: ``[N, 24, 24]`` BAViT FG probabilities of ``records``, in order.
        records: images with instance masks.
        levels: target sparsities (fractions of the detector patches pruned).
    """
    objects = [image_objects(record, grid) for record in records]
    budget = {}
    for level in levels:
        if progress:
            progress(f"sparsity {level:.2f}")
        row = budget_metrics(fg_prob, objects, level, grid, calibration, prior, cca_steps, resample, seed)
        budget[f"{level:.2f}"] = {method: metrics.summary() for method, metrics in row.items()}
    return budget


def budget_metrics(fg_prob: np.ndarray, objects: Sequence[ImageObjects], level: float, grid: int,
                   calibration: Calibration | None, prior: np.ndarray | None, cca_steps: int = DEFAULT_CCA_STEPS,
                   resample: str = "nearest", seed: int = 0) -> dict[str, BudgetMetrics]:
    """Every method's :class:`BudgetMetrics` at one sparsity level, in :data:`METHODS` order (arguments as
    :func:`method_masks`); ``metrics.kept_patches`` holds each image's kept count."""
    masks = method_masks(fg_prob, objects, level, grid, calibration, prior, cca_steps, resample, seed)
    row = {}
    for method in METHODS:
        if method not in masks:
            continue
        metrics = BudgetMetrics()
        for mask, obj in zip(masks[method], objects):
            metrics.update(mask, obj)
        row[method] = metrics
    return row


def format_budget(budget: dict[str, dict[str, dict]]) -> str:
    """Markdown: one row per level and method, the achieved mean sparsity next to the target."""

    def cell(value, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    lines = ["| target sparsity | method | mean sparsity (p10-p90) | object pixel recall | instance keep rate "
             "| keep S / M / L |", "|---|---|---|---|---|---|"]
    for level, row in budget.items():
        for method, m in row.items():
            spread = f"{cell(m['sparsity_mean'], '.1%')} ({cell(m['sparsity_p10'], '.0%')}-{cell(m['sparsity_p90'], '.0%')})"
            sizes = " / ".join(cell(m[f"keep_rate_{s}"], ".2f") for s in SIZES)
            lines.append(f"| {float(level):.0%} | {method} | {spread} | {cell(m['pixel_recall'])} "
                         f"| {cell(m['keep_rate'])} | {sizes} |")
    return "\n".join(lines)


def plot_budget(budget: dict[str, dict[str, dict]], path, title: str = "") -> None:
    """Object pixel recall against mean sparsity, one line per method (matplotlib's Agg canvas, PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    styles = {"oracle": ("k", "--"), "random": ("0.6", ":"), "centre": ("tab:olive", "-."),
              "bavit_topk": ("tab:blue", "-"), "bavit_calibrated": ("tab:orange", "-"),
              "bavit_calibrated_cca": ("tab:red", "-")}
    for method in METHODS:
        points = sorted((row[method]["sparsity_mean"], row[method]["pixel_recall"])
                        for row in budget.values() if method in row)
        if points:
            colour, style = styles[method]
            ax.plot([100 * s for s, _ in points], [r for _, r in points], color=colour, linestyle=style,
                    marker="o", markersize=3, label=method)
    ax.set_xlabel("mean sparsity (% of YOLOS patches pruned)")
    ax.set_ylabel("object pixel recall")
    ax.set_ylim(0.0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


__all__ = ["ImageObjects", "image_objects", "BudgetMetrics", "top_k_mask", "method_masks", "budget_metrics",
           "evaluate_budget", "format_budget", "plot_budget", "METHODS", "DEFAULT_LEVELS", "PLOT_LEVELS", "SIZES"]
