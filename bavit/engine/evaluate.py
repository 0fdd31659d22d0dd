"""Token metrics of a BAViT checkpoint before/after CCA, with baselines, and their markdown tables; the command line
is ``python -m bavit evaluate`` (:mod:`bavit.cli.evaluate`)."""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import torch

from ..core.checkpoint import Checkpoint
from ..core.labels import BOX_TAU
from ..core.model import BAViT
from ..data.records import Record
from ..predictor import Predictor
from ..pruning.calibration import Calibration
from ..pruning.detector import yolos_grid, yolos_tiny_config
from ..pruning.keep_mask import keep_mask_from_probs
from ..pruning.settings import DEFAULT_CCA_STEPS, DEFAULT_THRESHOLD, PruningSettings
from .budget import DEFAULT_LEVELS, PLOT_LEVELS, evaluate_budget
from .metrics import TokenMetrics

METRIC_KEYS = ("token_accuracy", "balanced_accuracy", "fg_precision", "fg_recall", "fg_iou", "object_keep_rate")


@torch.no_grad()
def predict_probs(model: BAViT | Predictor, records: list[Record], batch_size: int = 16, label_source: str = "mask",
                  box_rule: str = "coverage", box_tau: float = BOX_TAU, backend: str = "torch",
                  int8: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """FG probabilities ``[N, G, G]`` (the Predictor's batched BAViT step, :meth:`Predictor.set_images`) and
    labels ``[N, G, G]`` for ``records``.

    Args:
        model: a BAViT, run by a Predictor on ``backend`` (``"torch"``, or ``"onnxruntime"`` with int8 MatMuls
            unless ``int8=False``, as the app runs it), or a :class:`~bavit.predictor.Predictor` to use as it is.
        records: the images; labels by ``label_source`` (``"mask"`` or ``"boxes"`` with ``box_rule``/``box_tau``).
    """
    predictor = model if isinstance(model, Predictor) else Predictor(bavit=model, detector=None, backend=backend,
                                                                       bavit_int8=int8)
    config = predictor.bavit.config
    grid = (config.grid_size, config.grid_size)
    label_kwargs = dict(source=label_source, fg_frac=config.fg_frac, box_rule=box_rule, box_tau=box_tau)
    if not records:
        return np.zeros((0, *grid), np.float32), np.zeros((0, *grid), np.int64)
    probs, labels = [], []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        probs.append(predictor.set_images([record.load_image() for record in chunk], detect=False).fg_prob)
        labels += [record.labels(grid, **label_kwargs) for record in chunk]
    return torch.cat(probs).numpy(), torch.stack(labels).numpy()


def score(grids: np.ndarray, labels: np.ndarray, records: list[Record], grid: int) -> dict:
    metrics = TokenMetrics()
    for predicted, label, record in zip(grids, labels, records):
        metrics.update(predicted, label, record.instance_patches((grid, grid)))
    return metrics.summary()


def select_grids(probs: np.ndarray, threshold: float, cca_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, after CCA)`` bool FG grids of ``probs`` ``[N, G, G]`` by the one keep-mask rule
    (:func:`bavit.pruning.keep_mask.keep_mask_from_probs`: ``prob >= threshold``, validated), as the Predictor
    selects them."""
    selected = keep_mask_from_probs(torch.from_numpy(probs), PruningSettings(threshold=threshold, cca_steps=cca_steps),
                                    grid=probs.shape[-1])
    return selected.grid_raw.numpy(), selected.grid_cca.numpy()


def evaluate(model: BAViT, records: list[Record], threshold: float = DEFAULT_THRESHOLD,
             cca_steps: int = DEFAULT_CCA_STEPS,
             prior: np.ndarray | None = None, batch_size: int = 16, label_source: str = "mask",
             sweep: tuple[float, ...] = (), levels: Sequence[float] = DEFAULT_LEVELS,
             calibration: Calibration | None = None, grid: int = 32, curve_levels: Sequence[float] = (),
             backend: str = "torch", int8: bool = True) -> dict:
    """Metrics of ``model`` on ``records`` (the keys of :data:`METRIC_KEYS` plus counts).

    Returns a dict with the raw metrics at top level, the same under ``after_cca``, and
    ``baselines.all_background`` / ``baselines.center_prior`` (per-cell FG frequency of the *training* labels > 0.5,
    as stored in the checkpoint; without one, the evaluated set's own frequency, marked ``prior_source``).
    ``sweep`` thresholds add ``sweep: [{threshold, raw: {...}, after_cca: {...}}]`` from the same probabilities.
    ``budget`` holds pruning quality at each sparsity of ``levels`` on the ``grid x grid`` detector grid
    (:func:`bavit.engine.budget.evaluate_budget`), ``budget_curve`` the same at ``curve_levels`` (for the plot).
    """
    grid_size = model.config.grid_size
    probs, labels = predict_probs(model, records, batch_size, label_source, backend=backend, int8=int8)
    raw, grown = select_grids(probs, threshold, cca_steps)
    prior_source = "training labels (checkpoint)"
    if prior is None:
        valid = labels != -100
        prior = ((labels == 1) & valid).sum(0) / np.maximum(valid.sum(0), 1)
        prior_source = "evaluated set (no prior in checkpoint)"
    prior_grid = np.broadcast_to(np.asarray(prior).reshape(grid_size, grid_size) > 0.5, raw.shape)
    result = score(raw, labels, records, grid_size)
    result["after_cca"] = score(grown, labels, records, grid_size)
    result["baselines"] = {
        "all_background": score(np.zeros_like(raw), labels, records, grid_size),
        "center_prior": {**score(prior_grid, labels, records, grid_size), "prior_source": prior_source},
    }
    result["threshold"] = threshold
    result["cca_steps"] = cca_steps
    prior_cells = np.asarray(prior, dtype=np.float32).reshape(grid_size, grid_size)
    result["budget"] = evaluate_budget(probs, records, levels, calibration, prior_cells, grid, cca_steps)
    if curve_levels:
        result["budget_curve"] = evaluate_budget(probs, records, curve_levels, calibration, prior_cells, grid, cca_steps)
    result["calibration"] = None if calibration is None else {"images": calibration.images, "source": calibration.source,
                                                              "backend": calibration.backend}
    result["sweep"] = []
    for value in sweep:
        grid_raw, grid_cca = select_grids(probs, value, cca_steps)
        result["sweep"].append({"threshold": value, "raw": score(grid_raw, labels, records, grid_size),
                                "after_cca": score(grid_cca, labels, records, grid_size)})
    return result


def format_sweep(result: dict) -> str:
    """Markdown table of the threshold sweep: recall/precision/balanced accuracy before and after CCA."""
    lines = ["| threshold | token acc | balanced acc | FG recall | FG precision | token acc (CCA) | balanced acc (CCA) "
             "| FG recall (CCA) | FG precision (CCA) | pred FG (CCA) |", "|" + "---|" * 10]
    for row in result["sweep"]:
        raw, grown = row["raw"], row["after_cca"]
        values = [raw["token_accuracy"], raw["balanced_accuracy"], raw["fg_recall"], raw["fg_precision"],
                  grown["token_accuracy"], grown["balanced_accuracy"], grown["fg_recall"], grown["fg_precision"],
                  grown["predicted_fg_fraction"]]
        lines.append(f"| {row['threshold']:.2f} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines)


def format_table(result: dict, title: str = "") -> str:
    """Markdown table: model, model + CCA, and the two baselines."""

    def cell(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    rows = [
        ("BAViT", result),
        (f"BAViT + CCA ({result['cca_steps']} steps)", result["after_cca"]),
        ("all background", result["baselines"]["all_background"]),
        ("centre prior", result["baselines"]["center_prior"]),
    ]
    header = "| " + " | ".join(["model", *METRIC_KEYS, "keep S/M/L", "pred FG"]) + " |"
    lines = [title, header, "|" + "---|" * (len(METRIC_KEYS) + 3)] if title else [header, "|" + "---|" * (len(METRIC_KEYS) + 3)]
    for name, values in rows:
        by_size = values["object_keep_rate_by_size"]
        sizes = "/".join("-" if by_size[s] is None else f"{by_size[s]:.2f}" for s in ("small", "medium", "large"))
        lines.append("| " + " | ".join([name, *(cell(values[k]) for k in METRIC_KEYS), sizes,
                                         cell(values["predicted_fg_fraction"])]) + " |")
    lines.append(f"{result['images']} images, {result['tokens']} tokens, threshold {result['threshold']}")
    return "\n".join(lines)


def evaluate_checkpoint(checkpoint: Checkpoint, records: list[Record], threshold: float = DEFAULT_THRESHOLD,
                        cca_steps: int = DEFAULT_CCA_STEPS, batch_size: int = 16, label_source: str = "mask",
                        sweep: Sequence[float] = (), levels: Sequence[float] = DEFAULT_LEVELS, curve: bool = False,
                        backend: str = "torch", float32: bool = False) -> tuple[dict, Calibration | None, int]:
    """:func:`evaluate` of the model of ``checkpoint`` (:func:`~bavit.core.checkpoint.read_checkpoint`), with that
    file's training prior and calibration, on the YOLOS-tiny grid; ``curve`` adds the :data:`~bavit.engine.budget.PLOT_LEVELS` curve for a plot.

    Returns ``(result, calibration, grid)``: :func:`evaluate`'s dict plus ``checkpoint``, ``backend``, ``config``
    and ``train_images``; the checkpoint's calibration (None without one) and the detector grid side."""
    model, extra, calibration = checkpoint.model, checkpoint.extra, Calibration.from_checkpoint(checkpoint)
    prior = np.asarray(extra["fg_prior"]) if "fg_prior" in extra else None
    grid = yolos_grid(yolos_tiny_config().patch_size)
    result = evaluate(model, records, threshold, cca_steps, prior, batch_size, label_source, tuple(sweep),
                      tuple(levels), calibration, grid, curve_levels=PLOT_LEVELS if curve else (), backend=backend,
                      int8=not float32)
    result["checkpoint"] = str(checkpoint.path)
    result["backend"] = backend if backend == "torch" else f"{backend} ({'float32' if float32 else 'int8 MatMuls'})"
    result["config"] = json.loads(model.config.to_json())
    result["train_images"] = extra.get("train_images")
    return result, calibration, grid
