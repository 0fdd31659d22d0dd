"""Object pixel recall against end-to-end latency (BAViT included), per checkpoint; the command line is
``python -m bavit tradeoff`` (:mod:`bavit.cli.tradeoff`).

A BAViT with a more expensive stem may prune better, but it also costs more before the detector starts; this
command puts both on one axis. For each calibrated BAViT checkpoint and each target sparsity:

- quality, as ``python -m bavit evaluate`` measures it (:func:`bavit.engine.evaluate.predict_probs` on the split,
  then :func:`bavit.engine.budget.budget_metrics`): object pixel recall, instance keep rate, mean sparsity, and each
  image's kept count on the ``32 x 32`` YOLOS grid, for ``bavit_calibrated`` (one threshold for all images, from
  the checkpoint's calibration) and ``bavit_topk``;
- latency, measured in this process (:func:`time_pipeline`; medians, every call run in turn each
  round): each checkpoint's BAViT forward through its :class:`~bavit.predictor.Predictor` (batch 1, its square
  resize included), the pruned YOLOS at a grid of kept counts (:func:`count_grid`; shared by all
  checkpoints, it depends only on the count) and the dense YOLOS, all on the same image and backend.

End-to-end ms at a level = BAViT ms + the mean over images of the pruned-YOLOS ms interpolated (piecewise linear)
at each image's own kept count (:func:`mean_pruned_ms`); the cost is not linear in tokens
(attention is quadratic), so the mean kept count would not give the mean cost. Not included, for every checkpoint
alike: the 512x512 YOLOS preprocessing (the dense detector needs it too) and the keep-mask rule (well under a
millisecond). Latency does not depend on the weights, so without detector weights the YOLOS-tiny architecture at
random init is timed, and the report says which weights ran.

Below: the quality rows (:func:`pruning_quality`), the latency (:func:`time_pipeline`), the run that joins them
(:func:`run_tradeoff`), and its markdown table (:func:`format_table`) and plot (:func:`plot`); the measured figures
are in ``docs/results.md``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..core.checkpoint import read_checkpoint
from ..data.records import Record
from ..deploy.runtime import DEFAULT_BACKEND, check_backend
from ..engine.budget import budget_metrics, image_objects, top_k_mask
from ..engine.evaluate import predict_probs
from ..errors import ConfigError, DataError
from ..predictor import Predictor
from ..pruning.calibration import Calibration
from ..pruning.detector import DEFAULT_DETECTOR
from ..pruning.settings import sparsity_value
from .figures import finish, new_axes
from .timing import detector_weights, interleaved_medians, machine_info

DEFAULT_LEVELS = (0.10, 0.20, 0.29, 0.35, 0.40, 0.46, 0.55)
BAVIT_METHODS = ("bavit_calibrated", "bavit_topk", "bavit_calibrated_cca")  # bavit.engine.budget's BAViT methods
DEFAULT_METHODS = BAVIT_METHODS[:2]
COUNT_STEPS = 8  # the pruned YOLOS is timed at cells * j / COUNT_STEPS kept patches, j = 1..COUNT_STEPS


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


def count_grid(cells: int, observed: Sequence[int] = (), counts: Optional[Sequence[int]] = None) -> list[int]:
    """Ascending kept counts at which to time the pruned detector.

    Args:
        cells: detector patches (1024 on the 32x32 grid).
        observed: the images' kept counts; the smallest and largest are added, so interpolating never extrapolates.
        counts: the grid to start from (default ``cells * j / 8``: 128, 256, ..., 1024 on 32x32).
    Raises:
        ConfigError: a count outside ``1..cells``.
    """
    grid = set(counts if counts is not None else (round(cells * j / COUNT_STEPS) for j in range(1, COUNT_STEPS + 1)))
    if any(not 1 <= count <= cells for count in grid):
        raise ConfigError(f"kept counts to time must lie in 1..{cells}, got {sorted(grid)}")
    if len(observed):  # at least one patch: an image that keeps none is costed as one that keeps one
        grid |= {max(1, int(min(observed))), max(1, int(max(observed)))}
    return sorted(grid)


def mean_pruned_ms(kept_per_image: Sequence[int], counts: Sequence[int], pruned_ms: Sequence[float]) -> float:
    """Mean over images of the pruned detector's ms, interpolated piecewise linearly over the measured ``(counts,
    pruned_ms)`` at each image's own kept count (clamped to the end points outside them).

    Args:
        kept_per_image: detector patches each image keeps.
        counts: ascending kept counts the detector was timed at; pruned_ms: its median ms at each.
    """
    return float(np.mean(np.interp(np.asarray(kept_per_image, dtype=np.float64), counts, pruned_ms)))


def time_pipeline(timer: Predictor, bavits: Mapping[str, Predictor], image: Image.Image, counts: Sequence[int],
                  repeats: int, warmup: int) -> dict:
    """Median ms of the dense detector, each BAViT and the pruned detector at each kept count, all run in turn
    (:func:`~bavit.bench.timing.interleaved_medians`), batch 1, on one image.

    Args:
        timer: the predictor whose detector runs (``detector_runner``: dense, or pruned on a keep mask of ``count``
            patches, ``[1, 3, 512, 512]`` pixels prepared once, as the bench does).
        bavits: label -> predictor whose ``run_bavit`` (the square resize and the forward) is timed.
    Returns:
        ``{"dense_ms": float, "counts": [...], "pruned_ms": [ms per count], "bavit_ms": {label: ms}}``.
    """
    grid = timer.yolos_grid
    pixels = timer.yolos_pixels(image)
    rng = np.random.default_rng(0)  # which patches are kept does not change the cost, only how many
    masks = {count: torch.from_numpy(top_k_mask(rng.random((grid, grid)), count))[None] for count in counts}
    detector_run = timer.detector_runner
    runs: dict[str, Callable[[], object]] = {"dense": lambda: detector_run(pixels)}
    for label, predictor in bavits.items():
        runs[f"bavit {label}"] = lambda predictor=predictor: predictor.run_bavit(image)
    for count, mask in masks.items():
        runs[f"pruned {count}"] = lambda mask=mask: detector_run(pixels, mask)
    medians = interleaved_medians(runs, repeats, warmup)
    return {"dense_ms": medians["dense"], "counts": list(counts),
            "pruned_ms": [medians[f"pruned {count}"] for count in counts],
            "bavit_ms": {label: medians[f"bavit {label}"] for label in bavits}}


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
        counts: kept counts to time the pruned detector at (default :func:`count_grid`'s).
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


def format_table(report: dict) -> str:
    """Markdown: the detector's ms per kept count, then one row per checkpoint, level and method."""

    def cell(value, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    latency = report["latency"]
    lines = [(f"{report['images']} images {report['dataset']}; backend {report['backend']}, {report['threads']} "
              f"threads; medians of {report['repeats']} interleaved rounds; detector: {report['weights']['detector']}"),
             "", f"dense YOLOS: {latency['dense_ms']:.1f} ms", "",
             "| kept patches | " + " | ".join(str(count) for count in latency["counts"]) + " |",
             "|---|" + "---|" * len(latency["counts"]),
             "| pruned YOLOS ms | " + " | ".join(f"{ms:.1f}" for ms in latency["pruned_ms"]) + " |", "",
             ("| checkpoint | target sparsity | method | mean sparsity | object pixel recall | instance keep rate "
              "| BAViT ms | end-to-end ms | speed-up vs dense |"), "|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['checkpoint']} | {row['level']:.0%} | {row['method']} "
                     f"| {cell(row['sparsity_mean'], '.1%')} | {cell(row['pixel_recall'])} | {cell(row['keep_rate'])} "
                     f"| {row['bavit_ms']:.1f} | {row['end_to_end_ms']:.1f} | {row['speedup']:.2f}x |")
    lines += ["", f"end-to-end: {report['end_to_end']}"]
    return "\n".join(lines)


def plot(report: dict, path: str | os.PathLike) -> Path:
    """Object pixel recall against mean end-to-end ms, one line per checkpoint and method, and dense YOLOS at
    recall 1 (matplotlib's Agg canvas, PNG; no global backend)."""
    fig, ax = new_axes((6.4, 4.4))
    styles = {"bavit_calibrated": ("-", "o"), "bavit_topk": ("--", "s"), "bavit_calibrated_cca": (":", "^")}
    for index, entry in enumerate(report["checkpoints"]):
        for method in report["methods"]:
            points = sorted((row["end_to_end_ms"], row["pixel_recall"], row["level"]) for row in report["rows"]
                            if row["checkpoint"] == entry["label"] and row["method"] == method
                            and row["pixel_recall"] is not None)
            if not points:
                continue
            style, marker = styles[method]
            ax.plot([ms for ms, _, _ in points], [recall for _, recall, _ in points], color=f"C{index}",
                    linestyle=style, marker=marker, markersize=3, label=f"{entry['label']}, {method}")
            if method == report["methods"][0]:
                for ms, recall, level in points:
                    ax.annotate(f"{level:.0%}", (ms, recall), fontsize=5, xytext=(2, 2), textcoords="offset points")
    ax.plot([report["latency"]["dense_ms"]], [1.0], "k*", markersize=9, label="dense YOLOS")
    return finish(fig, ax, path, "mean end-to-end latency (ms): BAViT + pruned YOLOS", "object pixel recall",
                  f"{report['images']} images {report['dataset']}; {report['backend']}, {report['threads']} threads, "
                  "batch 1 (labels: target sparsity)", 8, "lower right", f"detector: {report['weights']['detector']}")
