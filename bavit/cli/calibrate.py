"""``python -m bavit calibrate``: the flags, mapped to :func:`bavit.engine.calibrate.calibrate_checkpoint`, and the
thresholds at the paper's levels printed as a markdown table."""
from __future__ import annotations

import argparse

from ..core.checkpoint import read_checkpoint
from ..engine.calibrate import calibrate_checkpoint
from ..pruning.calibration import LEVELS, sparsity_standard_error
from .common import add_dataset_arguments, records_from_args, subset_description

REPORT_LEVELS = (0.29, 0.35, 0.40, 0.46)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="store the threshold for each mean sparsity in a BAViT checkpoint",
        description="Find, on held-out images, the one FG-probability threshold that gives each target mean sparsity "
                    "(0-95%%, with and without CCA) and store it in the checkpoint's metadata.")
    parser.add_argument("--checkpoint", required=True, help="BAViT .safetensors checkpoint (rewritten in place)")
    add_dataset_arguments(parser, default_split="train2017", default_subset="holdout")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--fold-models", nargs="+", metavar="CKPT",
                        help="cross-fitted calibration: each image's probabilities come from the first of these models "
                             "that did not train on it (e.g. K models trained with --folds K --fold i --subset fit), "
                             "so all images of --subset all can calibrate a checkpoint trained on all of them")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                        help="run BAViT in torch (float32) or as the app serves it: its ONNX graph with int8 MatMuls "
                             "in onnxruntime (default %(default)s; the calibration records which)")
    parser.add_argument("--allow-trained-images", action="store_true",
                        help="calibrate even on images the checkpoint was trained on (biased: less sparsity on new "
                             "images than asked)")
    parser.set_defaults(func=run)


def calibration_source(args: argparse.Namespace) -> str:
    """Where the calibration images come from, as stored in the calibration: split, subset and how it was drawn."""
    return (f"{args.split if not getattr(args, 'voc_root', None) else args.image_set} {subset_description(args)}"
            + (f", out of fold from {len(args.fold_models)} models" if args.fold_models else ""))


def run(args: argparse.Namespace) -> int:
    checkpoint = read_checkpoint(args.checkpoint)
    records = records_from_args(args)
    source = calibration_source(args)
    calibration, probs = calibrate_checkpoint(checkpoint, records, source, args.batch_size, args.fold_models or (),
                                              args.allow_trained_images, args.backend)
    print(f"calibrated {args.checkpoint} on {len(records)} images ({source}; BAViT in {calibration.backend})")
    grid = calibration.grid

    def error(steps: int, index: int) -> str:
        value = sparsity_standard_error(probs, calibration.thresholds[steps][index], steps, grid, calibration.resample)
        return "-" if value is None else f"±{100 * value:.1f}"

    print("| target mean sparsity | threshold | achieved (standard error, points) | threshold (CCA 3) "
          "| achieved (CCA 3) |\n|---|---|---|---|---|")
    for level in REPORT_LEVELS:
        index = LEVELS.index(level)
        print(f"| {level:.0%} | {calibration.thresholds[0][index]:.4f} | {calibration.achieved[0][index]:.1%} "
              f"({error(0, index)}) | {calibration.thresholds[3][index]:.4f} | {calibration.achieved[3][index]:.1%} "
              f"({error(3, index)}) |")
    print(f"\nThe standard error is that of the mean sparsity over these {len(records)} images: on new images the "
          "same threshold's mean is expected to differ from the target by about that much.")
    return 0
