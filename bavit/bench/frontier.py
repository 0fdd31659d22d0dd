"""The cost-quality frontier of BAViT designs: what each trained checkpoint costs next to the detector it prunes, and
what it keeps, measured in one run (``python -m bavit frontier``), with its table (:func:`format_table`) and plot
(:func:`plot`).

A *point* is a checkpoint on one BAViT graph: ``int8`` (onnxruntime with int8 MatMuls, what the app runs) or
``float32`` (its float graph). For every point:

- **cost**: BAViT's median ms for one image (square resize, normalisation and the graph: :meth:`Predictor.run_bavit`,
  onnxruntime, batch 1), timed in turn with every other point, the dense YOLOS-tiny and the pruned YOLOS-tiny at the
  target sparsity (:func:`~.timing.interleaved_medians`), so that load on a shared machine falls on all alike; its
  share of the dense detector, and the speed-up the parts give, ``dense / (BAViT + pruned YOLOS)`` (the keep-mask
  rule's fraction of a millisecond left out: ``python -m bavit bench`` times the whole pipeline);
- **quality** on the given images (a held-out fold of train2017 when choosing; val2017 once, at the end): token
  accuracy at 0.5 on BAViT's own grid, and on the 32x32 detector grid at the target sparsity the top-k pixel recall
  and the calibrated one threshold's pixel recall, instance keep rate and mean sparsity (:mod:`bavit.engine.budget`,
  with the checkpoint's own calibration).

The detector's weights do not change its cost, so the YOLOS-tiny architecture at random init is timed (the report
says so). A checkpoint that trained on some of the evaluated images is marked ``seen``: its quality
there is not a held-out figure.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.checkpoint import read_checkpoint
from ..data.records import Record
from ..engine.evaluate import evaluate_checkpoint
from ..errors import ConfigError
from ..predictor import Predictor
from ..pruning.accounting import bavit_macs
from ..pruning.detector import YOLOS_SIZE
from ..pruning.keep_mask import kept_count
from .figures import finish, new_axes
from .timing import detector_weights, find_images, interleaved_medians, machine_info

GRAPHS = ("int8", "float32")
DEFAULT_SPARSITY = 0.35
TARGET_SHARE_OF_DENSE = 0.05  # the target: a BAViT at about a twentieth of the detector


@dataclass(frozen=True)
class FrontierPoint:
    """One checkpoint on one BAViT graph (``"int8"`` or ``"float32"``), named ``label`` in the table."""

    label: str
    checkpoint: Path
    graph: str = "int8"


def frontier_points(checkpoints: Sequence[str | os.PathLike], graphs: Sequence[str] = ("int8",),
                    labels: Sequence[str] | None = None) -> list[FrontierPoint]:
    """Every checkpoint on every graph, labelled by ``labels`` or by its file (its folder's name for a training
    run's ``last.safetensors``), with the graph added when there are several.

    Raises:
        ConfigError: an unknown graph, or labels that do not pair with the checkpoints.
    """
    unknown = [graph for graph in graphs if graph not in GRAPHS]
    if unknown or not graphs:
        raise ConfigError(f"graphs are {' and '.join(GRAPHS)}, got {', '.join(map(str, graphs)) or 'none'}")
    paths = [Path(path) for path in checkpoints]
    if labels is not None and len(labels) != len(paths):
        raise ConfigError(f"{len(labels)} labels for {len(paths)} checkpoints")
    names = list(labels) if labels is not None else [p.parent.name if p.stem == "last" else p.stem for p in paths]
    if len(set(names)) != len(names):
        raise ConfigError(f"two checkpoints share a label ({', '.join(names)}); give --labels")
    return [FrontierPoint(name if len(graphs) == 1 else f"{name} {graph}", path, graph)
            for name, path in zip(names, paths) for graph in graphs]


def point_quality(point: FrontierPoint, records: list[Record], sparsity: float) -> dict:
    """Token accuracy and the pruning quality at ``sparsity`` of one point on ``records`` (see module docstring)."""
    checkpoint = read_checkpoint(point.checkpoint)
    result, calibration, _ = evaluate_checkpoint(checkpoint, records, levels=(sparsity,), backend="onnxruntime",
                                                 float32=point.graph == "float32")
    level = result["budget"][f"{sparsity:.2f}"]
    trained = {str(i) for i in checkpoint.extra.get("train_image_ids", ())}
    calibrated = level.get("bavit_calibrated")
    return {
        "token_accuracy": result["token_accuracy"],
        "topk_pixel_recall": level["bavit_topk"]["pixel_recall"],
        "topk_keep_rate": level["bavit_topk"]["keep_rate"],
        "oracle_pixel_recall": level["oracle"]["pixel_recall"],
        "calibrated_pixel_recall": calibrated["pixel_recall"] if calibrated else None,
        "calibrated_keep_rate": calibrated["keep_rate"] if calibrated else None,
        "calibrated_sparsity_mean": calibrated["sparsity_mean"] if calibrated else None,
        "calibration": None if calibration is None else f"{calibration.images} images, {calibration.source}",
        "seen": sum(str(r.image_id) in trained for r in records),
        "images": len(records),
    }


def point_costs(points: Sequence[FrontierPoint], sparsity: float, repeats: int, images: list,
                detector: str | os.PathLike | None = None) -> dict:
    """Median ms of every point's BAViT (one image per call, cycling through ``images``), the dense detector and
    the pruned one keeping :func:`~bavit.pruning.keep_mask.kept_count` patches (the same random mask every call), timed in turn on torch's
    thread count. The detector is ``detector`` (a YOLOS hub id or folder), by default the YOLOS-tiny architecture at
    random init: weights do not change its cost."""
    predictors = {point.label: Predictor(bavit=read_checkpoint(point.checkpoint).model, detector=None,
                                         backend="onnxruntime", bavit_int8=point.graph == "int8")
                  for point in points}
    timing_predictor = Predictor(bavit=next(iter(predictors.values())).bavit, detector=detector, backend="onnxruntime")
    yolos = timing_predictor.detector_runner
    grid = timing_predictor.yolos_grid
    pixels = timing_predictor.yolos_pixels(images[0])
    order = torch.randperm(grid * grid, generator=torch.Generator().manual_seed(0))[: kept_count(sparsity, grid)]
    keep = torch.zeros(grid * grid, dtype=torch.bool)
    keep[order] = True
    keep = keep.view(1, grid, grid)
    cursor = {label: 0 for label in predictors}

    def bavit_call(label: str):
        def call():
            predictor = predictors[label]
            predictor.run_bavit(images[cursor[label] % len(images)])
            cursor[label] += 1
        return call

    runs = {"dense": lambda: yolos(pixels), "pruned": lambda: yolos(pixels, keep)}
    runs.update({label: bavit_call(label) for label in predictors})
    for predictor in predictors.values():
        predictor.bavit_runner  # exported before timing
    medians = interleaved_medians(runs, repeats)
    return {"dense_ms": medians["dense"], "pruned_yolos_ms": medians["pruned"],
            "kept_patches": kept_count(sparsity, grid), "grid": grid,
            "bavit_ms": {label: medians[label] for label in predictors},
            "detector": (detector_weights(timing_predictor, str(detector)) if detector is not None else
                         "YOLOS-tiny architecture at random init (timing only: its weights do not change its cost)")}


def run_frontier(points: Sequence[FrontierPoint], records: list[Record], sparsity: float = DEFAULT_SPARSITY,
                 threads: int = 2, repeats: int = 20, images: int = 8, data: str = "",
                 detector: str | os.PathLike | None = None, progress=print) -> dict:
    """The frontier report: one row per point (cost and quality, module docstring), the timing's setting and the
    machine. ``images`` images of ``records`` (the first ones; the bench's examples without records) are cycled for
    the timing; ``repeats`` rounds of every call after two untimed ones; ``detector`` as :func:`point_costs`."""
    if not points:
        raise ConfigError("the frontier needs at least one checkpoint")
    load_before = os.getloadavg()
    torch.set_num_threads(threads)
    rows = []
    for point in points:
        progress(f"quality of {point.label} on {len(records)} images")
        checkpoint = read_checkpoint(point.checkpoint)
        config = checkpoint.config
        rows.append({"label": point.label, "checkpoint": str(point.checkpoint), "graph": point.graph,
                     "img_size": config.img_size, "stem": config.stem, "embed_dim": config.embed_dim,
                     "depth": config.depth, "bavit_mmacs": bavit_macs(config) / 1e6,
                     "parameters": sum(p.numel() for p in checkpoint.model.parameters()),
                     "train_images": checkpoint.extra.get("train_images"),
                     **(point_quality(point, records, sparsity) if records else {})})
    progress(f"timing {len(points)} BAViTs and YOLOS-tiny, {repeats} rounds")
    timing_images = [r.load_image() for r in records[:images]] if records else find_images(images)
    costs = point_costs(points, sparsity, repeats, timing_images, detector)
    for row in rows:
        row["bavit_ms"] = costs["bavit_ms"][row["label"]]
        row["share_of_dense"] = row["bavit_ms"] / costs["dense_ms"]
        row["speedup_parts"] = costs["dense_ms"] / (row["bavit_ms"] + costs["pruned_yolos_ms"])
    return {
        "sparsity": sparsity,
        "data": data,
        "threads": threads,
        "repeats": repeats,
        "timing_images": len(timing_images),
        "dense_ms": costs["dense_ms"],
        "pruned_yolos_ms": costs["pruned_yolos_ms"],
        "kept_patches": costs["kept_patches"],
        "detector_grid": costs["grid"],
        "detector_size": YOLOS_SIZE,
        "detector": costs["detector"],
        "target_share_of_dense": TARGET_SHARE_OF_DENSE,
        "rows": rows,
        "machine": machine_info(load_before),
    }


def pareto(rows: Sequence[dict], quality: str = "calibrated_pixel_recall") -> list[str]:
    """Labels of the rows no other row beats on both cost (``bavit_ms``, lower) and ``quality`` (higher), cheapest
    first; rows without that quality figure are left out."""
    rated = sorted((row for row in rows if row.get(quality) is not None), key=lambda row: (row["bavit_ms"], -row[quality]))
    front, best = [], -np.inf
    for row in rated:
        if row[quality] > best:
            front.append(row["label"])
            best = row[quality]
    return front


def _cell(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
    """Markdown: one row per point, cheapest first, the Pareto points (calibrated pixel recall vs ms) starred."""
    sparsity = report["sparsity"]
    front = set(pareto(report["rows"]))
    lines = [(f"{report['data']}; onnxruntime, batch 1, {report['threads']} threads; medians of {report['repeats']} "
              f"interleaved rounds on {report['timing_images']} images; load average "
              f"{report['machine']['load_average_before'][0]:.2f} before, "
              f"{report['machine']['load_average_after'][0]:.2f} after"),
             (f"dense YOLOS-tiny {report['dense_ms']:.1f} ms; pruned YOLOS-tiny at {sparsity:.0%} "
              f"({report['kept_patches']} of {report['detector_grid'] ** 2} patches) {report['pruned_yolos_ms']:.1f} ms; "
              f"{report['detector']}"), "",
             (f"| design | graph | input | stem | width | MMACs | BAViT ms | of dense | speed-up at {sparsity:.0%} "
              f"(parts) | token acc | top-k pixel recall | calibrated pixel recall / keep rate / mean sparsity |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(report["rows"], key=lambda row: row["bavit_ms"]):
        label = f"**{row['label']}** ★" if row["label"] in front else row["label"]
        if row.get("seen"):
            label += f" (trained on {row['seen']} of these {row['images']} images)"
        calibrated = (f"{_cell(row.get('calibrated_pixel_recall'))} / {_cell(row.get('calibrated_keep_rate'))} / "
                      f"{_cell(row.get('calibrated_sparsity_mean'), '.1%')}")
        lines.append(f"| {label} | {row['graph']} | {row['img_size']} | {row['stem']} | {row['embed_dim']}x{row['depth']} "
                     f"| {row['bavit_mmacs']:.0f} | {row['bavit_ms']:.1f} | {row['share_of_dense']:.1%} "
                     f"| {row['speedup_parts']:.2f}x | {_cell(row.get('token_accuracy'), '.2%')} "
                     f"| {_cell(row.get('topk_pixel_recall'))} | {calibrated} |")
    oracle = {row.get("oracle_pixel_recall") for row in report["rows"]} - {None}
    if oracle:
        lines.append(f"\ntop-k oracle pixel recall at {sparsity:.0%}: {min(oracle):.3f}; "
                     f"★: no other point is both cheaper and higher in calibrated pixel recall; "
                     f"target: BAViT at most {report['target_share_of_dense']:.0%} of dense")
    return "\n".join(lines)


def plot(report: dict, path: str | os.PathLike) -> Path:
    """Calibrated (circles) and top-k (squares) pixel recall against BAViT ms, one colour per point (hollow for a
    float32 graph), and the line at the target share of the dense detector (matplotlib's Agg canvas, PNG)."""
    fig, ax = new_axes((6.4, 4.4))
    rows = sorted(report["rows"], key=lambda row: row["bavit_ms"])
    for index, row in enumerate(rows):
        colour = f"C{index % 10}"
        face = "none" if row["graph"] == "float32" else colour
        for key, marker in (("calibrated_pixel_recall", "o"), ("topk_pixel_recall", "s")):
            if row.get(key) is not None:
                ax.plot([row["bavit_ms"]], [row[key]], marker, markersize=6, color=colour, markerfacecolor=face,
                        label=row["label"] if key == "calibrated_pixel_recall" else None)
    ax.axvline(report["target_share_of_dense"] * report["dense_ms"], color="0.5", linestyle=":",
               label=f"{report['target_share_of_dense']:.0%} of dense YOLOS-tiny ({report['dense_ms']:.0f} ms)")
    return finish(fig, ax, path, "BAViT ms per image (onnxruntime, batch 1; resize and normalisation included)",
                  f"object pixel recall at {report['sparsity']:.0%} on the 32x32 detector grid",
                  f"{report['data']}; {report['threads']} threads\n"
                  "circles: one calibrated threshold; squares: top-k per image; hollow: float32 graph", 7,
                  "center right",
                  f"python -m bavit frontier; load average {report['machine']['load_average_before'][0]:.2f}")


__all__ = ["FrontierPoint", "GRAPHS", "frontier_points", "point_quality", "point_costs", "run_frontier", "pareto",
           "format_table", "plot"]
