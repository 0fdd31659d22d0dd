"""COCO box mAP of dense and BAViT-pruned YOLOS, the project's Table 2 (paper §4.2); the command line is
``python -m bavit map`` (:mod:`bavit.cli.coco_map`).

For the dense detector and for every BAViT setting (an FG-probability threshold or a keep ratio) it reports the
mean sparsity (fraction of the 32x32 YOLOS patches pruned), the token accounting of Eq. 4 and COCO box
mAP@[.5:.95] / AP50 / AP_small from pycocotools' ``COCOeval`` (wrapped, not reimplemented).

One pass over the images: each image is decoded once, BAViT runs once, and the dense and every pruned setting
reuse its FG probabilities. Detections are all 100 detection-token predictions (best non-"no object" class and
its softmax score, transformers' own post-processing with no score threshold), boxes converted to original
image pixels and COCO ``[x, y, w, h]``; detector label ids become COCO category ids by name
(:func:`bavit.data.coco.label_to_category`: the identity for ``hustvl/yolos-tiny``).

Every row, dense included, sees the same square 512x512 input the pruned pipeline uses (paper §3.5), so the dense
row is the like-for-like baseline. YOLOS' own evaluation resizes with the aspect ratio kept (shortest edge 512 for
yolos-tiny, 28.7 AP reported by its authors), so expect the dense row to differ somewhat from that figure.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from ..box_ops import box_xyxy_to_xywh
from ..data.coco import CocoDetection, label_to_category, resolve_paths
from ..errors import ConfigError
from ..pruning.detector import YOLOS_SIZE, yolos_grid, yolos_pixels
from ..pruning.keep_mask import keep_mask_from_probs
from ..pruning.settings import cca_steps_value, keep_ratio_value, threshold_value

# COCOeval.stats order (bbox): AP, AP50, AP75, AP_small, AP_medium, AP_large, AR1, AR10, AR100, ...
STAT_NAMES = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")
DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass(frozen=True)
class Setting:
    """One Table 2 row: dense (no threshold, no keep ratio) or BAViT-pruned."""

    threshold: float | None = None
    keep_ratio: float | None = None

    @property
    def dense(self) -> bool:
        return self.threshold is None and self.keep_ratio is None

    @property
    def name(self) -> str:
        if self.dense:
            return "YOLOS (dense)"
        if self.keep_ratio is not None:
            return f"BAViT+YOLOS keep {self.keep_ratio:g}"
        return f"BAViT+YOLOS thr {self.threshold:g}"


def make_settings(thresholds: Iterable[float] = (), keep_ratios: Iterable[float] = ()) -> list[Setting]:
    """Dense first, then one setting per threshold (in [0, 1]) and per keep ratio (in (0, 1])."""
    settings = [Setting()]
    settings += [Setting(threshold=threshold_value(threshold)) for threshold in thresholds]
    settings += [Setting(keep_ratio=keep_ratio_value(ratio)) for ratio in keep_ratios]
    return settings


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


def _result_rows(image_id: int, scores: torch.Tensor, labels: torch.Tensor, boxes_xyxy: torch.Tensor,
                 label_map: dict[int, int]) -> np.ndarray:
    """:func:`to_coco_results` as a float64 ``[n, 7]`` array ``(image_id, x, y, w, h, score, category_id)``."""
    found = to_coco_results(image_id, scores, labels, boxes_xyxy, label_map)
    return np.array([[r["image_id"], *r["bbox"], r["score"], r["category_id"]] for r in found],
                    dtype=np.float64).reshape(-1, 7)


def _post_process(outputs, target_sizes: list[tuple[int, int]]) -> list[dict]:
    """transformers' YOLOS post-processing, no score threshold: per image scores/labels ``[Q]``, boxes ``[Q, 4]``."""
    from transformers import YolosImageProcessor

    return YolosImageProcessor().post_process_object_detection(outputs, threshold=0.0, target_sizes=target_sizes)


@dataclass
class _Row:
    setting: Setting
    results: list[np.ndarray] = field(default_factory=list)  # per image [n, 7] (see evaluate_bbox)
    kept_patches: list[int] = field(default_factory=list)


def _collate(items):
    return items


@torch.no_grad()
def run_map(detector, dataset: CocoDetection, bavit=None, settings: Sequence[Setting] = (Setting(),),
            cca_steps: int = 3, batch_size: int = 4, image_size: int = YOLOS_SIZE, progress: bool = True,
            backend: str = "torch", bavit_int8: bool = True) -> dict:
    """Run every setting over ``dataset`` and evaluate each with COCOeval.

    Args:
        detector: a YOLOS model patched with :func:`bavit.pruning.yolos.patch_yolos` (eval mode).
        dataset: images + ground truth.
        bavit: a :class:`bavit.core.model.BAViT` (needed for any pruned setting).
        settings: rows to produce (see :func:`make_settings`).
        cca_steps: CCA iterations on the 24x24 grid before resampling to YOLOS' grid.
        batch_size: images per forward pass.
        image_size: square YOLOS input side in pixels (512 -> 32x32 patches).
        backend: ``"torch"`` or ``"onnxruntime"`` (both models exported in memory; :mod:`bavit.deploy.runtime`).
        bavit_int8: with onnxruntime, BAViT with int8 MatMuls, as the Predictor runs it (False: float32).
    Returns:
        The report: ``{"images", "image_size", "cca_steps", "label_mapping", "rows": [...]}``; each row has
        ``model``, ``threshold``, ``keep_ratio``, ``sparsity`` (fraction pruned), the token accounting of the
        mean kept patches (Eq. 4, :mod:`bavit.pruning.accounting`: ``kept_patches``, ``bavit_tokens`` (0 for dense),
        ``yolos_tokens``, ``yolos_pruned_tokens``, ``total_tokens``, ``token_reduction_pct`` (percent),
        ``dense_macs``, ``pipeline_macs``), ``detections`` and the :data:`STAT_NAMES` APs (fractions).
    """
    from tqdm import tqdm

    from ..core.config import SMALL
    from ..imageio import to_tensor
    from ..pruning.accounting import mean_accounting, token_accounting

    cca_steps = cca_steps_value(cca_steps)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if any(not s.dense for s in settings) and bavit is None:
        raise ConfigError("pruned settings need a BAViT checkpoint (--bavit)")
    from ..deploy.runtime import bavit_runner, detector_runner

    grid = yolos_grid(detector.config.patch_size, image_size)
    run_detector = detector_runner(detector, backend, image_size)
    run_bavit = bavit_runner(bavit.for_inference(), backend, int8=bavit_int8) if bavit is not None else None
    label_map = label_to_category(detector.config.id2label, dataset.coco)
    rows = [_Row(s) for s in settings]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=_collate)
    started = time.perf_counter()
    for items in tqdm(loader, desc="map", disable=not progress, unit="batch"):
        pixels = torch.stack([yolos_pixels(item.image, image_size) for item in items])
        sizes = [(item.height, item.width) for item in items]
        fg_prob = None
        if bavit is not None and any(not r.setting.dense for r in rows):
            cfg = bavit.config
            fg_prob = run_bavit(torch.stack([to_tensor(item.image, cfg.img_size, cfg.mean, cfg.std) for item in items]))
        for row in rows:
            if row.setting.dense:
                outputs = run_detector(pixels)
                row.kept_patches += [grid * grid] * len(items)
            else:
                mask = keep_mask_from_probs(fg_prob, threshold=row.setting.threshold, keep_ratio=row.setting.keep_ratio,
                                            cca_steps=cca_steps, grid=grid).keep_mask
                outputs = run_detector(pixels, mask)
                row.kept_patches += mask.flatten(1).sum(1).tolist()
            for item, det in zip(items, _post_process(outputs, sizes)):
                row.results.append(_result_rows(item.image_id, det["scores"], det["labels"], det["boxes"], label_map))
    seconds = time.perf_counter() - started

    identity = all(label == cat for label, cat in label_map.items())
    report = {
        "backend": backend,
        "images": len(dataset),
        "image_size": image_size,
        "cca_steps": cca_steps,
        "seconds": seconds,
        "label_mapping": ("identity: detector label id = COCO category id" if identity else
                          f"by name: {len(label_map)} detector labels -> COCO category ids"),
        "rows": [],
    }
    for row in rows:
        row_accounting = mean_accounting(
            token_accounting(kept, detector.config, bavit.config if bavit is not None else SMALL, (image_size, image_size))
            for kept in row.kept_patches)
        if row.setting.dense:  # no BAViT in front of the dense detector
            row_accounting = dataclasses.replace(row_accounting, bavit_layers=0, bavit_macs=0)
        report["rows"].append({
            "model": row.setting.name,
            "threshold": row.setting.threshold,
            "keep_ratio": row.setting.keep_ratio,
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
        })
    return report


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def markdown_table(report: dict) -> str:
    """Table 2 layout: sparsity, mAP / AP50 / AP_small (COCO, %), token counts (mean per image) and Eq. 4 reduction."""
    header = ("| Model | Sparsity % | mAP | AP50 | AP_small | BAViT tokens | YOLOS tokens | YOLOS pruned | "
              "YOLOS + BAViT | % Reduction |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in report["rows"]:
        lines.append(
            f"| {row['model']} | {_pct(row['sparsity'])} | {_pct(row['mAP'])} | {_pct(row['AP50'])} | "
            f"{_pct(row['AP_small'])} | {row['bavit_tokens']:.0f} | {row['yolos_tokens']:.0f} | "
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
    from ..core.model import load_checkpoint
    from ..pruning.detector import load_yolos_model
    from ..pruning.yolos import patch_yolos

    settings = make_settings(thresholds or (), keep_ratios or ())
    try:
        model = patch_yolos(load_yolos_model(detector))
    except ValueError as exc:  # a checkpoint that is not YOLOS
        raise ConfigError(str(exc)) from None
    ann_file, images_dir = resolve_paths(coco_root, split, ann, images)
    dataset = CocoDetection(ann_file, images_dir, limit=limit)
    bavit_model, bavit_path = None, None
    if any(not s.dense for s in settings):
        bavit_path = bavit
        bavit_model = load_checkpoint(bavit_path) if bavit_path is not None else None
    report = run_map(model, dataset, bavit_model, settings, cca_steps=cca_steps, batch_size=batch_size,
                     image_size=image_size, progress=progress, backend=backend)
    return {"detector": str(detector), "bavit": str(bavit_path) if bavit_path else None,
            "annotations": str(ann_file), "images_dir": str(images_dir), "threads": torch.get_num_threads(),
            **report}
