"""Object pixel recall against end-to-end latency (BAViT included), per checkpoint; the command line is
``python -m bavit tradeoff`` (:mod:`bavit.cli.tradeoff`).

A BAViT with a more expensive stem may prune better, but it also costs more before the detector starts; this
command puts both on one axis. For each calibrated BAViT checkpoint and each target sparsity:

- quality, as ``python -m bavit evaluate`` measures it (:func:`bavit.engine.evaluate.predict_probs` on the split,
  then :func:`bavit.engine.budget.budget_metrics`): object pixel recall, instance keep rate, mean sparsity, and each
  image's kept count on the ``32 x 32`` YOLOS grid, for ``bavit_calibrated`` (one threshold for all images, from
  the checkpoint's calibration) and ``bavit_topk``;
- latency, measured in this process (:func:`.tradeoff_latency.time_pipeline`; medians, every call run in turn each
  round): each checkpoint's BAViT forward through its :class:`~bavit.predictor.Predictor` (batch 1, its square
  resize included), the pruned YOLOS at a grid of kept counts (:func:`.tradeoff_latency.count_grid`; shared by all
  checkpoints, it depends only on the count) and the dense YOLOS, all on the same image and backend.

End-to-end ms at a level = BAViT ms + the mean over images of the pruned-YOLOS ms interpolated (piecewise linear)
at each image's own kept count (:func:`.tradeoff_latency.mean_pruned_ms`); the cost is not linear in tokens
(attention is quadratic), so the mean kept count would not give the mean cost. Not included, for every checkpoint
alike: the 512x512 YOLOS preprocessing (the dense detector needs it too) and the keep-mask rule (well under a
millisecond). Latency does not depend on the weights, so without detector weights the YOLOS-tiny architecture at
random init is timed, and the report says which weights ran.

This module holds the quality rows (:func:`pruning_quality`) and the run that joins them to the latency
(:func:`run_tradeoff`); the table and plot are in :mod:`.tradeoff_report`, the measured figures in
``docs/results.md``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..core.checkpoint import read_checkpoint
from ..data.records import Record
from ..deploy.runtime import DEFAULT_BACKEND, check_backend
from ..engine.budget import budget_metrics, image_objects
from ..engine.evaluate import predict_probs
from ..errors import ConfigError, DataError
from ..predictor import Predictor
from ..pruning.calibration import Calibration
from ..pruning.detector import DEFAULT_DETECTOR
from ..pruning.settings import sparsity_value
from .timing import detector_weights, machine_info
from .tradeoff_latency import count_grid, mean_pruned_ms, time_pipeline

DEFAULT_LEVELS = (0.10, 0.20, 0.29, 0.35, 0.40, 0.46, 0.55)
BAVIT_METHODS = ("bavit_calibrated", "bavit_topk", "bavit_calibrated_cca")  # bavit.engine.budget's BAViT methods
DEFAULT_METHODS = BAVIT_METHODS[:2]


def pruning_quality(fg_prob: np.ndarray, records: Sequence[Record], levels: Sequence[float],
                    calibration: Optional[Calibration], grid: int, methods: Sequence[str] = DEFAULT_METHODS,
                    resample: str = "nearest") -> list[dict]:
    """One row per level and method: :meth:`bavit.engine.budget.BudgetMetrics.summary` (``pixel_recall``,
    ``keep_rate``, ``sparsity_mean`` ...; equal to :func:`bavit.engine.budget.evaluate_budget`'s) with ``level``,
    ``method`` and ``kept_per_image`` (detector patches each image keeps).

    Args:
        fg_prob: ``[N, 24, 24]`` BAViT FG probabilities of ``records``, in order.
        levels: target sparsities (fractions of the ``grid x grid`` detector patches pruned).
        calibration: the checkpoint's (needed by the calibrated methods).
    """
    objects = [image_objects(record, grid) for record in records]
    rows = []
    for level in levels:
        metrics = budget_metrics(fg_prob, objects, level, grid, calibration, None, resample=resample)
        for method in methods:
            rows.append({"level": float(level), "method": method, **metrics[method].summary(),
                         "kept_per_image": metrics[method].kept_patches})
    return rows


def _load(path: str | os.PathLike, methods: Sequence[str], backend: str, detector: Optional[str]):
    """``(model, predictor)`` of a checkpoint, refusing one without the calibration ``methods`` need."""
    saved = read_checkpoint(path)
    model, calibration = saved.model, Calibration.from_checkpoint(saved)
    if calibration is None and any(method != "bavit_topk" for method in methods):
        raise ConfigError(f"{path} carries no calibration, which the calibrated methods need: run python -m bavit "
                          f"calibrate --checkpoint {path} first, or use --methods bavit_topk")
    return model, Predictor(bavit=model, detector=detector, backend=backend, calibration=calibration)


def run_tradeoff(
    checkpoints: Sequence[str | os.PathLike],
    records: Sequence[Record],
    labels: Optional[Sequence[str]] = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    methods: Sequence[str] = DEFAULT_METHODS,
    backend: str = DEFAULT_BACKEND,
    detector: str = DEFAULT_DETECTOR,
    counts: Optional[Sequence[int]] = None,
    repeats: int = 10,
    warmup: int = 2,
    batch_size: int = 16,
    dataset: str = "",
    log: Callable[[str], None] = print,
) -> dict:
    """Quality and end-to-end latency of each checkpoint at each level (see the module docstring).

    Args:
        checkpoints: calibrated BAViT checkpoints; labels: their names in the table and plot (default: file stems).
        records: the images to score (with instance masks); the first is the one timed.
        levels: target sparsities (fractions); methods: of :data:`BAVIT_METHODS`.
        backend: runs BAViT (probabilities and latency) and the detector; detector: YOLOS id or directory.
        counts: kept counts to time the pruned detector at (default :func:`.tradeoff_latency.count_grid`'s).
        repeats / warmup: timed / untimed rounds of :func:`~bavit.bench.timing.interleaved_medians`.
    Returns:
        ``{"rows": [{checkpoint, level, method, pixel_recall, keep_rate, sparsity_mean, kept_per_image, bavit_ms,
        pruned_yolos_ms, end_to_end_ms, speedup, ...}], "latency": {"dense_ms", "counts", "pruned_ms",
        "bavit_ms"}, "checkpoints": [...], "weights", ...}``; ms are medians, ``speedup`` = dense YOLOS ms /
        end-to-end ms.
    Raises:
        ConfigError: bad arguments or a checkpoint without calibration. DataError: no images.
    """
    check_backend(backend)
    if not checkpoints:
        raise ConfigError("give at least one BAViT checkpoint")
    labels = list(labels) if labels else [Path(path).stem for path in checkpoints]
    if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
        raise ConfigError(f"give one distinct label per checkpoint ({len(checkpoints)}), got {labels}")
    if repeats < 1 or warmup < 0:
        raise ConfigError("repeats must be >= 1 and warmup >= 0")
    unknown = sorted(set(methods) - set(BAVIT_METHODS))
    if unknown or not methods:
        raise ConfigError(f"methods must be some of {', '.join(BAVIT_METHODS)}, got {list(methods)}")
    levels = [sparsity_value(level) for level in levels]
    if not records:
        raise DataError("no images to evaluate")

    loaded = [_load(path, methods, backend, detector if index == 0 else None) for index, path in enumerate(checkpoints)]
    for _, predictor in loaded:
        predictor.warm_up()  # the onnxruntime exports happen here, not in a timed run
    timer = loaded[0][1]  # its detector is the one timed, for every checkpoint
    grid = timer.yolos_grid
    entries = []
    for label, path, (model, predictor) in zip(labels, checkpoints, loaded):
        log(f"{label}: FG probabilities of {len(records)} images ({backend})")
        probs, _ = predict_probs(predictor, list(records), batch_size)
        calibration = predictor.calibration
        entries.append({
            "label": label, "checkpoint": str(path), "config": json.loads(model.config.to_json()),
            "parameters": sum(p.numel() for p in model.parameters()),
            "calibration": (None if calibration is None
                            else {"images": calibration.images, "source": calibration.source}),
            "rows": pruning_quality(probs, records, levels, calibration, grid, methods, predictor.resample_mode),
        })

    observed = [kept for entry in entries for row in entry["rows"] for kept in row["kept_per_image"]]
    counts = count_grid(grid * grid, observed, counts)
    log(f"timing: dense YOLOS, {len(labels)} BAViT, pruned YOLOS at {len(counts)} kept counts; "
        f"{repeats} rounds after {warmup}")
    load_before = os.getloadavg()
    latency = time_pipeline(timer, {label: predictor for label, (_, predictor) in zip(labels, loaded)},
                            records[0].load_image(), counts, repeats, warmup)

    rows = []
    for entry in entries:
        bavit_ms = entry["bavit_ms"] = latency["bavit_ms"][entry["label"]]
        for row in entry.pop("rows"):
            pruned = mean_pruned_ms(row["kept_per_image"], counts, latency["pruned_ms"])
            rows.append({"checkpoint": entry["label"], **row, "kept_mean": float(np.mean(row["kept_per_image"])),
                         "bavit_ms": bavit_ms, "pruned_yolos_ms": pruned, "end_to_end_ms": bavit_ms + pruned,
                         "speedup": latency["dense_ms"] / (bavit_ms + pruned)})
    return {
        "rows": rows,
        "latency": latency,
        "checkpoints": entries,
        "levels": levels,
        "methods": list(methods),
        "images": len(records),
        "dataset": dataset,
        "timed_image": str(records[0].image_path),
        "backend": backend,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "warmup": warmup,
        "grid": grid,
        "weights": {"detector": detector_weights(timer, detector), "detector_pretrained": timer.detector_ready},
        "end_to_end": "BAViT (its square resize + forward, batch 1) + pruned YOLOS forward interpolated at each image's "
                      "kept count, mean over images; YOLOS 512x512 preprocessing and the keep-mask rule not included",
        "machine": machine_info(load_before),
    }
