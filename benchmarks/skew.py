"""Training-serving skew of BAViT, measured (never timed): what differs between the way a checkpoint was trained or
calibrated and the way the app serves it.

- ``preprocessing``: token accuracy with the inputs made the way the shipped checkpoint's training made its
  un-augmented view (PIL bilinear to the 512 px cache, then torch's antialiased bilinear to the input size,
  normalised: :func:`training_pixels_before`) against the one preprocessing the Predictor serves and training uses
  (:func:`bavit.core.model.bavit_pixels`: PIL bilinear straight to the input size, normalised).
- ``calibration``: a calibration's probabilities computed in torch float32 (``calibrate --backend torch``, the
  shipped calibration's) against onnxruntime with int8 MatMuls (how the app serves BAViT): the thresholds of each,
  and the mean sparsity each threshold gives on the other backend's probabilities (what the app achieves at a
  target when the calibration came from torch).

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.skew preprocessing --checkpoint CKPT [CKPT ...] \\
        --coco-root ../shared/data/coco --split train2017 --subset holdout --folds 5 --fold 0
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.skew calibration --checkpoint CKPT --fold-models F0 ... F4 \\
        --coco-root ../shared/data/coco --split train2017 --subset all
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bavit.cli import run_script
from bavit.cli.common import add_dataset_arguments, records_from_args, subset_description
from bavit.core.checkpoint import read_checkpoint
from bavit.core.config import BAViTConfig
from bavit.core.model import BAViT, bavit_pixels
from bavit.data.records import Record
from bavit.deploy.runtime import bavit_graph_name, bavit_runner
from bavit.engine.calibrate import calibration_probs
from bavit.engine.evaluate import score, select_grids
from bavit.pruning.calibration import LEVELS, calibrate, sparsity_at, sparsity_standard_error
from bavit.pruning.detector import yolos_grid, yolos_tiny_config
from bavit.pruning.settings import DEFAULT_THRESHOLD

TRAINING_CACHE_SIZE = 512  # the default --cache-size of `python -m bavit train`, which the shipped runs used
PREPROCESSINGS = ("inference (bavit_pixels)", "training before 2026-12-06")
BACKENDS = ("torch", "onnxruntime")
REPORT_LEVELS = (0.29, 0.35, 0.40, 0.46)


def training_pixels_before(image: Image.Image, config: BAViTConfig,
                           cache_size: int = TRAINING_CACHE_SIZE) -> torch.Tensor:
    """BAViT's un-augmented training input before 2026-12-06 (``augment.plain_sample`` then): ``float32 [3, S, S]``
    from an RGB image by PIL's bilinear resize to the ``cache_size`` square, torch's antialiased bilinear
    ``F.interpolate`` to ``config.img_size``, then ``(x - mean) / std``."""
    cached = torch.from_numpy(np.asarray(image.resize((cache_size, cache_size), Image.BILINEAR)).copy())
    size = config.img_size
    pixels = F.interpolate(cached.permute(2, 0, 1)[None].float() / 255.0, size=(size, size), mode="bilinear",
                           antialias=True, align_corners=False)[0]
    mean = torch.tensor(config.mean)[:, None, None]
    std = torch.tensor(config.std)[:, None, None]
    return (pixels - mean) / std


@torch.no_grad()
def compare_preprocessing(model: BAViT, records: list[Record], backend: str = "torch",
                          batch_size: int = 16) -> dict:
    """Token metrics at :data:`~bavit.pruning.settings.DEFAULT_THRESHOLD` (no CCA) of ``model`` on ``records`` with
    each of :data:`PREPROCESSINGS`, and how far apart the two inputs and their probabilities are.

    Returns:
        ``{"rows": [{preprocessing, token_accuracy, balanced_accuracy, fg_recall, fg_precision}], "tokens_changed":
        fraction of tokens whose prediction differs, "mean_prob_difference", "max_prob_difference",
        "mean_pixel_difference" (0-255 units), "images", "tokens"}``.
    """
    config = model.config
    grid = config.grid_size
    runner = bavit_runner(model.for_inference(), backend)
    makers = {PREPROCESSINGS[0]: lambda image: bavit_pixels(image, config),
              PREPROCESSINGS[1]: lambda image: training_pixels_before(image, config)}
    probs = {name: [] for name in makers}
    pixel_difference = 0.0
    for start in range(0, len(records), batch_size):
        images = [record.load_image() for record in records[start:start + batch_size]]
        inputs = {name: torch.stack([make(image) for image in images]) for name, make in makers.items()}
        difference = (inputs[PREPROCESSINGS[0]] - inputs[PREPROCESSINGS[1]]) * torch.tensor(config.std)[:, None, None]
        pixel_difference += float(difference.abs().mean(dim=(1, 2, 3)).sum()) * 255.0
        for name, pixels in inputs.items():
            probs[name].append(runner(pixels).float())
    probs = {name: torch.cat(chunks).numpy() for name, chunks in probs.items()}
    labels = np.stack([record.labels((grid, grid), fg_frac=config.fg_frac).numpy() for record in records])
    rows, predicted = [], {}
    for name, values in probs.items():
        predicted[name], _ = select_grids(values, DEFAULT_THRESHOLD, 0)
        metrics = score(predicted[name], labels, records, grid)
        rows.append({"preprocessing": name, **{key: metrics[key] for key in
                                               ("token_accuracy", "balanced_accuracy", "fg_recall", "fg_precision")}})
    gap = np.abs(probs[PREPROCESSINGS[0]] - probs[PREPROCESSINGS[1]])
    return {"rows": rows, "tokens_changed": float((predicted[PREPROCESSINGS[0]] != predicted[PREPROCESSINGS[1]]).mean()),
            "mean_prob_difference": float(gap.mean()), "max_prob_difference": float(gap.max()),
            "mean_pixel_difference": pixel_difference / len(records), "images": len(records),
            "tokens": int(labels.size), "backend": bavit_graph_name(backend)}


def compare_calibration_backends(probs: dict[str, np.ndarray], levels: Sequence[float] = REPORT_LEVELS,
                                 cca_steps: Sequence[int] = (0, 3)) -> list[dict]:
    """For each backend's calibration probabilities ``probs[backend]`` (``[N, G, G]``, the same images): at each
    target of ``levels`` and CCA setting, the threshold calibrated on it, the mean sparsity it achieves there, and
    the mean sparsity (with its standard error) the same threshold gives on every backend's probabilities."""
    grid = yolos_grid(yolos_tiny_config().patch_size)
    calibrations = {backend: calibrate(values, LEVELS, cca_steps, grid=grid) for backend, values in probs.items()}
    rows = []
    for steps in cca_steps:
        for level in levels:
            index = LEVELS.index(level)
            for backend, calibration in calibrations.items():
                threshold = calibration.thresholds[steps][index]
                applied = {other: float(sparsity_at(torch.from_numpy(values), threshold, steps, grid).mean())
                           for other, values in probs.items()}
                errors = {other: sparsity_standard_error(torch.from_numpy(values), threshold, steps, grid)
                          for other, values in probs.items()}
                rows.append({"target": level, "cca_steps": steps, "calibrated_on": bavit_graph_name(backend),
                             "threshold": threshold, "achieved": calibration.achieved[steps][index],
                             "sparsity_on": {bavit_graph_name(o): v for o, v in applied.items()},
                             "standard_error_on": {bavit_graph_name(o): v for o, v in errors.items()}})
    return rows


def format_preprocessing(label: str, result: dict) -> str:
    lines = [f"## {label}: {result['images']} images, {result['tokens']} tokens, BAViT in {result['backend']}",
             "| input preprocessing | token acc | balanced acc | FG recall | FG precision |", "|---|---|---|---|---|"]
    lines += [f"| {row['preprocessing']} | {row['token_accuracy']:.2%} | {row['balanced_accuracy']:.2%} | "
              f"{row['fg_recall']:.4f} | {row['fg_precision']:.4f} |" for row in result["rows"]]
    lines.append(f"tokens whose prediction differs: {result['tokens_changed']:.2%}; FG probability difference mean "
                 f"{result['mean_prob_difference']:.4f}, max {result['max_prob_difference']:.3f}; input pixels differ "
                 f"by {result['mean_pixel_difference']:.2f} of 255 on average")
    return "\n".join(lines)


def format_calibration(rows: list[dict]) -> str:
    backends = list(rows[0]["sparsity_on"])
    lines = ["| target | CCA | calibrated on | threshold | " + " | ".join(f"mean sparsity on {b}" for b in backends)
             + " |", "|---|---|---|---|" + "---|" * len(backends)]
    for row in rows:
        cells = [f"{row['sparsity_on'][b]:.2%} (±{100 * row['standard_error_on'][b]:.1f})" for b in backends]
        lines.append(f"| {row['target']:.0%} | {row['cca_steps']} | {row['calibrated_on']} | {row['threshold']:.4f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This measurement's options."""
    parser.add_argument("part", choices=("preprocessing", "calibration"))
    parser.add_argument("--checkpoint", nargs="+", required=True,
                        help="preprocessing: the checkpoints to measure; calibration: the one calibrated")
    parser.add_argument("--fold-models", nargs="+", metavar="CKPT", default=(),
                        help="calibration: out-of-fold probabilities, as `python -m bavit calibrate --fold-models`")
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="preprocessing: where BAViT runs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    add_dataset_arguments(parser, default_split="train2017", voc=False, default_subset="holdout")


def run(args: argparse.Namespace) -> int:
    records = records_from_args(args)
    where = f"{args.split} {subset_description(args)}"
    if args.part == "preprocessing":
        for path in args.checkpoint:
            result = compare_preprocessing(read_checkpoint(path).model, records, args.backend, args.batch_size)
            print(format_preprocessing(f"{path} on {where}", result) + "\n")
        return 0
    checkpoint = read_checkpoint(args.checkpoint[0])
    probs = {backend: calibration_probs(checkpoint, records, args.batch_size, args.fold_models, backend=backend)
             for backend in BACKENDS}
    gap = np.abs(probs["torch"] - probs["onnxruntime"])
    print(f"{args.checkpoint[0]}: calibration probabilities of {len(records)} images ({where}"
          f"{f', out of fold from {len(args.fold_models)} models' if args.fold_models else ''}); torch float32 vs "
          f"onnxruntime int8 MatMuls: FG probability difference mean {gap.mean():.4f}, max {gap.max():.3f}; tokens "
          f"on the other side of 0.5: {((probs['torch'] >= 0.5) != (probs['onnxruntime'] >= 0.5)).mean():.2%}")
    print(format_calibration(compare_calibration_backends(probs)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.skew``; its help is this module's docstring."""
    return run_script("benchmarks.skew", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
