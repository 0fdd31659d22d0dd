"""What several commands share: the dataset flags and the records they name, and the bench commands' ending (the
``OMP_WAIT_POLICY`` note, the table printed, the JSON and plot written)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Optional

from ..data.records import SUBSETS, Record, coco_records, coco_split, voc_records
from ..data.splits import fold_split, holdout_split
from ..errors import DataError
from ..pruning.settings import DEFAULT_CCA_STEPS, DEFAULT_THRESHOLD, MAX_CCA_STEPS, cca_steps_value, threshold_value
from ..files import write_text


def subset_description(args: argparse.Namespace) -> str:
    """The ``--subset`` part of :func:`records_from_args` in words: ``"all"``, ``"fit (fold 2 of 5, seed 0)"`` or
    ``"holdout (15%, seed 0)"`` (as calibrations and training checkpoints record it)."""
    if args.subset == "all":
        return "all"
    if args.folds:
        return f"{args.subset} (fold {args.fold} of {args.folds}, seed {args.holdout_seed})"
    return f"{args.subset} ({args.holdout_fraction:.0%}, seed {args.holdout_seed})"


def records_from_args(args: argparse.Namespace) -> list[Record]:
    """Records from the CLI's ``--coco-root/--split``, ``--ann/--images`` or ``--voc-root/--image-set``, then the
    ``--subset`` of :func:`~bavit.data.splits.holdout_split` (or of :func:`~bavit.data.splits.fold_split` with
    ``--folds``) when the command has it."""
    if getattr(args, "voc_root", None):
        records = voc_records(args.voc_root, args.image_set)
    elif getattr(args, "ann", None):
        if not args.images:
            raise DataError("--ann needs --images DIR")
        records = coco_records(args.ann, args.images)
    elif getattr(args, "coco_root", None):
        records = coco_records(*coco_split(args.coco_root, args.split))
    else:
        raise DataError("give a dataset: --coco-root DIR [--split NAME], --ann FILE --images DIR, or --voc-root DIR")
    subset = getattr(args, "subset", "all")
    if subset == "all":
        return records
    if getattr(args, "folds", 0):
        fit, holdout = fold_split(records, args.folds, args.fold, args.holdout_seed)
    else:
        fit, holdout = holdout_split(records, args.holdout_fraction, args.holdout_seed)
    return fit if subset == "fit" else holdout


def add_dataset_arguments(parser: argparse.ArgumentParser, default_split: str, voc: bool = True,
                          default_subset: str | None = None) -> None:
    """``--coco-root/--split``, ``--ann/--images`` and (with ``voc``) ``--voc-root/--image-set``; with a
    ``default_subset``, also ``--subset all|fit|holdout``, ``--holdout-fraction`` and ``--holdout-seed``."""
    group = parser.add_argument_group("dataset (one of)")
    group.add_argument("--coco-root", help="COCO root with annotations/instances_SPLIT.json and SPLIT/")
    group.add_argument("--split", default=default_split, help=f"COCO split (default {default_split})")
    group.add_argument("--ann", help="a COCO-format instances JSON")
    group.add_argument("--images", help="image folder for --ann")
    if voc:
        group.add_argument("--voc-root", help="VOCdevkit (or VOC2012) folder")
        group.add_argument("--image-set", default="val" if default_split.startswith("val") else "train",
                           help="VOC ImageSets/Segmentation list name")
    if default_subset is not None:
        group.add_argument("--subset", choices=SUBSETS, default=default_subset,
                           help="all images, or the part of a held-out split to use: 'fit' (train on it) or "
                                f"'holdout' (calibrate / choose hyperparameters on it); default {default_subset}")
        group.add_argument("--holdout-fraction", type=float, default=0.15, help="held-out share (default 0.15)")
        group.add_argument("--holdout-seed", type=int, default=0, help="seed of the held-out split (default 0)")
        group.add_argument("--folds", type=int, default=0,
                           help="K-fold instead (cross-fitting): fit = all but fold --fold, holdout = fold --fold")
        group.add_argument("--fold", type=int, default=0, help="with --folds: which fold is held out (0..K-1)")


def add_setting_arguments(parser, threshold: bool = True, group=None) -> None:
    """``--cca-steps`` and (with ``threshold``) ``--threshold``, parsed by :mod:`bavit.pruning.settings` with its
    defaults and ranges; ``--threshold`` goes into ``group`` (a mutually exclusive group) when given."""
    if threshold:
        (group or parser).add_argument("--threshold", type=threshold_value, default=DEFAULT_THRESHOLD,
                                       help="BAViT FG-probability threshold in [0, 1] (default %(default)s)")
    parser.add_argument("--cca-steps", type=cca_steps_value, default=DEFAULT_CCA_STEPS,
                        help=f"CCA steps, 0..{MAX_CCA_STEPS} (default %(default)s)")


def note_omp_wait_policy(command: str) -> None:
    """On stderr, when ``OMP_WAIT_POLICY`` is unset: spinning OpenMP threads distort timings on a busy CPU."""
    if "OMP_WAIT_POLICY" not in os.environ:
        print("note: OMP_WAIT_POLICY is unset; on a busy shared CPU spinning OpenMP threads can make every run several "
              f"times slower; consider OMP_WAIT_POLICY=PASSIVE python -m bavit {command} ...", file=sys.stderr)


def print_and_write(report: dict, table: str, json_path: Optional[str], plot_path: Optional[str],
                    plot_report: Callable[[dict, str], object]) -> None:
    """A bench command's ending: print its ``table``, then write ``report`` as JSON and ``plot_report(report,
    plot_path)`` where asked (both written atomically)."""
    print(table)
    if json_path:
        write_text(json_path, json.dumps(report, indent=2))
        print(f"wrote {json_path}")
    if plot_path:
        plot_report(report, plot_path)
        print(f"wrote {plot_path}")
