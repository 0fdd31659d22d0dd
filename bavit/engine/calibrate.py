"""``python -m bavit calibrate``: store in a BAViT checkpoint the one threshold per target mean sparsity (Table 2).

Runs the checkpoint on calibration images (by default the held-out part of train2017: ``--subset holdout``),
finds for each mean sparsity from 0 to 95% in 1% steps and each CCA setting the threshold that gives it
(:func:`bavit.pruning.calibration.calibrate`) and writes the result into the checkpoint's safetensors metadata.
Images the checkpoint records as trained on are refused: thresholds from them give less sparsity on new images.
With ``--fold-models`` the probabilities are cross-fitted instead: each image is scored by a model that did not
train on it (K models, each trained without one fold: ``train --folds K --fold i --subset fit``), so a checkpoint
trained on all images can be calibrated on all of them, with a much smaller standard error than a small holdout.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from ..core.model import checkpoint_extra, load_checkpoint
from ..data.records import Record, add_dataset_arguments, records_from_args
from ..errors import DataError
from ..pruning.calibration import LEVELS, calibrate, save_calibration, sparsity_standard_error
from ..pruning.detector import yolos_grid
from ..pruning.yolos import yolos_tiny_config
from .evaluate import predict_probs

REPORT_LEVELS = (0.29, 0.35, 0.40, 0.46)


def register(subparsers) -> None:
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
    parser.add_argument("--allow-trained-images", action="store_true",
                        help="calibrate even on images the checkpoint was trained on (biased: less sparsity on new "
                             "images than asked)")
    parser.set_defaults(func=run)


def check_unseen(checkpoint: str, records: list[Record], allow: bool = False) -> None:
    """Refuse (:class:`DataError`) calibration images the checkpoint records as trained on, unless ``allow``;
    warn when it records nothing."""
    trained = checkpoint_extra(checkpoint).get("train_image_ids")
    if trained is None:
        print("warning: the checkpoint does not record its training images; cannot check that the calibration "
              "images are new to it", file=sys.stderr)
        return
    seen = {str(i) for i in trained} & {str(r.image_id) for r in records}
    if seen and not allow:
        raise DataError(f"{len(seen)} of the {len(records)} calibration images were used to train this checkpoint; "
                        "calibrate on images it did not see (e.g. --subset holdout of a model trained with "
                        "--subset fit, or --fold-models)")


def out_of_fold_probs(paths: list[str], records: list[Record], grid: int, batch_size: int = 16) -> np.ndarray:
    """``[N, G, G]`` FG probabilities of ``records``, each from the first model in ``paths`` that did not train on
    it (cross-fitting: every image is new to the model that scores it).

    Raises:
        DataError: a model that does not record its training images or predicts another grid, or an image that
            every model trained on.
    """
    trained = []
    for path in paths:
        ids = checkpoint_extra(path).get("train_image_ids")
        if not ids:
            raise DataError(f"fold model {path} does not record its training images")
        trained.append({str(i) for i in ids})
    owner = []
    for record in records:
        free = [index for index, ids in enumerate(trained) if str(record.image_id) not in ids]
        if not free:
            raise DataError(f"every fold model trained on image {record.image_id}: no out-of-fold probability")
        owner.append(free[0])
    probs = np.zeros((len(records), grid, grid), dtype=np.float32)
    for index, path in enumerate(paths):
        mine = [k for k, o in enumerate(owner) if o == index]
        if not mine:
            continue
        model = load_checkpoint(path)
        if model.config.grid_size != grid:
            raise DataError(f"fold model {path} predicts a {model.config.grid_size}x{model.config.grid_size} grid, "
                            f"not {grid}x{grid}")
        probs[mine] = predict_probs(model, [records[k] for k in mine], batch_size)[0]
    return probs


def run(args: argparse.Namespace) -> int:
    model = load_checkpoint(args.checkpoint)
    records = records_from_args(args)
    if not records:
        raise DataError("no calibration images")
    if args.fold_models:
        probs = out_of_fold_probs(args.fold_models, records, model.config.grid_size, args.batch_size)
    else:
        check_unseen(args.checkpoint, records, args.allow_trained_images)
        probs, _ = predict_probs(model, records, args.batch_size)
    source = (f"{args.split if not getattr(args, 'voc_root', None) else args.image_set} {args.subset}"
              + (f" (fold {args.fold} of {args.folds}, seed {args.holdout_seed})" if args.subset != "all" and args.folds
                 else f" ({args.holdout_fraction:.0%}, seed {args.holdout_seed})" if args.subset != "all" else "")
              + (f", out of fold from {len(args.fold_models)} models" if args.fold_models else ""))
    calibration = calibrate(probs, LEVELS, grid=yolos_grid(yolos_tiny_config().patch_size), source=source)
    save_calibration(args.checkpoint, calibration)
    print(f"calibrated {args.checkpoint} on {len(records)} images ({source})")
    grid = calibration.grid
    probs = torch.from_numpy(probs)

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
