"""COCO box mAP of dense and BAViT-pruned YOLOS, the project's Table 2 (paper §4.2); the command line is
``python -m bavit map`` (:mod:`bavit.cli.coco_map`).

For the dense detector and for every BAViT setting (an FG-probability threshold or a keep ratio) it reports the
mean sparsity (fraction of the 32x32 YOLOS patches pruned), the token accounting of Eq. 4 and COCO box
mAP@[.5:.95] / AP50 / AP_small from pycocotools' ``COCOeval`` (wrapped, not reimplemented).

It runs the app's own pipeline, batched (:meth:`bavit.predictor.Predictor.set_images` and
:meth:`~bavit.predictor.Predictor.predict_batch`): one pass over the images, each decoded once, BAViT run once, and
the dense and every pruned setting reuse its FG probabilities. Detections are all 100 detection-token predictions (best non-"no object" class and
its softmax score, transformers' own post-processing with no score threshold), boxes converted to original
image pixels and COCO ``[x, y, w, h]``; detector label ids become COCO category ids by name
(:func:`bavit.data.coco.label_to_category`: the identity for ``hustvl/yolos-tiny``).

Every row, dense included, sees the same square 512x512 input the pruned pipeline uses (paper §3.5), so the dense
row is the like-for-like baseline. YOLOS' own evaluation resizes with the aspect ratio kept (shortest edge 512 for
yolos-tiny, 28.7 AP reported by its authors), so expect the dense row to differ somewhat from that figure.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from ..core.registry import DEFAULT_BAVIT_CHECKPOINT
from .cocoeval import evaluate_bbox, result_rows
from .pruning_cost import ap_against_dense
from ..data.coco import CocoDetection, label_to_category, resolve_paths
from ..errors import ConfigError
from ..predictor import Predictor
from ..pruning.detector import YOLOS_SIZE
from ..pruning.settings import DEFAULT_CCA_STEPS, PruningSettings

DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def setting_name(setting: PruningSettings | None) -> str:
    """A Table 2 row's model name: ``None`` is the dense detector."""
    if setting is None:
        return "YOLOS (dense)"
    if setting.keep_ratio is not None:
        return f"BAViT+YOLOS keep {setting.keep_ratio:g}"
    return f"BAViT+YOLOS thr {setting.threshold:g}"


def make_settings(thresholds: Iterable[float] = (), keep_ratios: Iterable[float] = (),
                  cca_steps: int = DEFAULT_CCA_STEPS) -> list[PruningSettings | None]:
    """Dense first (``None``), then one validated setting per threshold (in [0, 1]) and per keep ratio (in (0, 1]).

    Raises:
        ConfigError: a value out of range (:class:`bavit.pruning.settings.PruningSettings`).
    """
    return [None, *(PruningSettings(threshold=t, cca_steps=cca_steps) for t in thresholds),
            *(PruningSettings(keep_ratio=r, cca_steps=cca_steps) for r in keep_ratios)]


@dataclass
class _Row:
    setting: PruningSettings | None  # None: dense
    results: list[np.ndarray] = field(default_factory=list)  # per image [n, 7] (see evaluate_bbox)
    kept_patches: list[int] = field(default_factory=list)


def _collate(items):
    return items


@torch.no_grad()
def run_map(predictor: Predictor, dataset: CocoDetection, settings: Sequence[PruningSettings | None] = (None,),
            batch_size: int = 4, progress: bool = True) -> dict:
    """Run every setting over ``dataset`` through ``predictor``'s batched pipeline and evaluate each with COCOeval.

    Args:
        predictor: a :class:`bavit.predictor.Predictor` with detector weights (its backend, BAViT, input size and
            post-processing are the ones used).
        dataset: images + ground truth.
        settings: rows to produce (see :func:`make_settings`; ``None`` is the dense detector).
        batch_size: images per forward pass.
    Returns:
        The report: ``{"images", "image_size", "cca_steps", "label_mapping", "rows": [...]}``; each row has
        ``model``, ``threshold``, ``keep_ratio``, ``sparsity`` (fraction pruned), the token accounting of the
        mean kept patches (Eq. 4, :mod:`bavit.pruning.accounting`: ``kept_patches``, ``bavit_tokens`` (0 for dense),
        ``yolos_tokens``, ``yolos_pruned_tokens``, ``total_tokens``, ``token_reduction_pct`` (percent),
        ``dense_macs``, ``pipeline_macs``), ``detections``, the :data:`STAT_NAMES` APs (fractions) and, for a pruned
        row with the dense one beside it, ``mAP_vs_dense`` / ``AP50_vs_dense``: its AP against the dense detector's
        detections at or above the Predictor's score threshold, no ground truth needed.
    Raises:
        ConfigError: bad batch size, or a predictor without detector weights (no mAP of random weights).
    """
    from tqdm import tqdm

    from ..pruning.accounting import mean_accounting, token_accounting

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if not predictor.detector_ready:
        raise ConfigError(f"COCO mAP needs detector weights. {predictor.detector_status}")
    pruned = [s for s in settings if s is not None]
    label_map = label_to_category(predictor.yolos_config.id2label, dataset.coco)
    rows = [_Row(s) for s in settings]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=_collate)
    started = time.perf_counter()
    for items in tqdm(loader, desc="map", disable=not progress, unit="batch"):
        batch = predictor.set_images([item.image for item in items], bavit=bool(pruned))
        for row in rows:
            prediction = predictor.predict_batch(batch, row.setting)
            row.kept_patches += prediction.kept_patches
            for item, det in zip(items, predictor.post_process(prediction.outputs, batch.sizes, score_threshold=0.0)):
                row.results.append(result_rows(item.image_id, det["scores"], det["labels"], det["boxes"], label_map))
    seconds = time.perf_counter() - started

    identity = all(label == cat for label, cat in label_map.items())
    report = {
        "backend": predictor.backend,
        "images": len(dataset),
        "image_size": predictor.image_size,
        "cca_steps": pruned[0].cca_steps if pruned else None,
        "seconds": seconds,
        "label_mapping": ("identity: detector label id = COCO category id" if identity else
                          f"by name: {len(label_map)} detector labels -> COCO category ids"),
        "rows": [],
    }
    size = (predictor.image_size, predictor.image_size)
    dense = next((row for row in rows if row.setting is None), None)
    for row in rows:
        row_accounting = mean_accounting(token_accounting(kept, predictor.yolos_config, predictor.bavit.config, size)
                                         for kept in row.kept_patches)
        if row.setting is None:  # no BAViT in front of the dense detector
            row_accounting = dataclasses.replace(row_accounting, bavit_layers=0, bavit_macs=0)
        report["rows"].append({
            "model": setting_name(row.setting),
            "threshold": row.setting.threshold if row.setting else None,
            "keep_ratio": row.setting.keep_ratio if row.setting else None,
            "sparsity": row_accounting.sparsity,
            "kept_patches": row_accounting.kept_patches,
            "bavit_tokens": row_accounting.bavit_tokens,
            "yolos_tokens": row_accounting.yolos_dense_tokens,
            "yolos_pruned_tokens": row_accounting.yolos_pruned_tokens,
            "total_tokens": row_accounting.total_tokens,
            "token_reduction_pct": row_accounting.reduction_pct,
            "dense_macs": row_accounting.dense_macs,
            "pipeline_macs": row_accounting.pipeline_macs,
            "detections": int(sum(len(r) for r in row.results)),
            **evaluate_bbox(dataset.coco, np.concatenate(row.results), dataset.image_ids),
            **_against_dense(dense, row, dataset.image_ids, predictor.score_threshold),
        })
    return report


def _against_dense(dense: _Row | None, row: _Row, image_ids: Sequence[int], min_score: float) -> dict:
    """What pruning cost, without ground truth: the pruned row's AP against the dense row's detections at or above
    ``min_score`` (:func:`bavit.engine.pruning_cost.ap_against_dense`); ``None`` for the dense row or without one."""
    if dense is None or row.setting is None:
        return {"mAP_vs_dense": None, "AP50_vs_dense": None}
    against = ap_against_dense(dense.results, row.results, image_ids, min_score)
    return {"mAP_vs_dense": against["mAP"], "AP50_vs_dense": against["AP50"]}


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def markdown_table(report: dict) -> str:
    """Table 2 layout: sparsity, mAP / AP50 / AP_small (COCO, %), mAP against the dense detections, token counts
    (mean per image) and Eq. 4 reduction."""
    header = ("| Model | Sparsity % | mAP | AP50 | AP_small | mAP vs dense | BAViT tokens | YOLOS tokens | "
              "YOLOS pruned | YOLOS + BAViT | % Reduction |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in report["rows"]:
        lines.append(
            f"| {row['model']} | {_pct(row['sparsity'])} | {_pct(row['mAP'])} | {_pct(row['AP50'])} | "
            f"{_pct(row['AP_small'])} | {_pct(row.get('mAP_vs_dense'))} | {row['bavit_tokens']:.0f} | {row['yolos_tokens']:.0f} | "
            f"{row['yolos_pruned_tokens']:.0f} | {row['total_tokens']:.0f} | {row['token_reduction_pct']:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def map_report(detector: str, bavit: str | os.PathLike | None = None, *, coco_root: str | None = None,
               split: str = "val2017", ann: str | None = None, images: str | None = None,
               thresholds: Sequence[float] = DEFAULT_THRESHOLDS, keep_ratios: Sequence[float] = (),
               cca_steps: int = 3, limit: int | None = None, batch_size: int = 4, image_size: int = YOLOS_SIZE,
               backend: str = "torch", progress: bool = True) -> dict:
    """:func:`run_map` of the YOLOS ``detector`` (hub id or directory) on a COCO split (``coco_root`` and ``split``,
    or ``ann`` and ``images``; the first ``limit`` images by id), dense and pruned by the BAViT checkpoint ``bavit``
    at each of ``thresholds`` and ``keep_ratios`` (``bavit`` is loaded only when there is a pruned row).

    Returns :func:`run_map`'s report with ``detector``, ``bavit``, ``annotations``, ``images_dir`` and ``threads``
    in front.

    Raises:
        ConfigError: a detector that is not YOLOS, or bad settings. DataError: a missing dataset.
    """
    from ..pruning.detector import load_yolos_model

    settings = make_settings(thresholds or (), keep_ratios or (), cca_steps)
    try:
        model = load_yolos_model(detector)  # raises a clear error where the weights cannot be had
    except ValueError as exc:  # a checkpoint that is not YOLOS
        raise ConfigError(str(exc)) from None
    ann_file, images_dir = resolve_paths(coco_root, split, ann, images)
    dataset = CocoDetection(ann_file, images_dir, limit=limit)
    bavit_path = bavit or DEFAULT_BAVIT_CHECKPOINT
    predictor = Predictor(bavit=bavit_path, detector=model, backend=backend, image_size=image_size)
    report = run_map(predictor, dataset, settings, batch_size=batch_size, progress=progress)
    pruned = any(s is not None for s in settings)  # the dense rows use no BAViT
    return {"detector": str(detector), "bavit": str(bavit_path) if pruned else None,
            "annotations": str(ann_file), "images_dir": str(images_dir), "threads": torch.get_num_threads(),
            **report}
