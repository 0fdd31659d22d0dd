"""``python -m bavit costs``: the flags, mapped to :mod:`bavit.engine.dataset_costs` (BAViT once per image of a
COCO split, then every image's cost at one setting), the most costly images printed and the whole table written
as CSV and JSON where asked."""
from __future__ import annotations

import argparse
import time

import torch

from ..core.registry import DEFAULT_BAVIT_CHECKPOINT
from ..data.records import coco_split
from ..deploy.runtime import DEFAULT_BACKEND, bavit_graph_name
from ..engine.dataset_costs import (
    DEFAULT_BATCH_SIZE,
    SORTS,
    cost_rows,
    format_costs,
    scan_images,
    setting_words,
    write_costs,
)
from ..errors import ConfigError
from ..predictor import Predictor
from ..pruning.settings import PruningSettings, image_sparsity_value, sparsity_value
from .common import add_dataset_arguments, add_setting_arguments, records_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "costs", help="the images where pruning costs most (object pixels lost, per image)",
        description="Run BAViT once per image of a COCO split and list the images by the object pixels a setting "
                    "prunes away from the detector (the share of each image's object pixels in pruned patches, "
                    "at the detector's 512x512 input), most first; or by sparsity.")
    add_dataset_arguments(parser, default_split="val2017", voc=False)
    parser.add_argument("--bavit", default=None, help="BAViT checkpoint (default: the shipped BAViT-small COCO)")
    selection = parser.add_mutually_exclusive_group()
    add_setting_arguments(parser, group=selection)
    selection.add_argument("--sparsity", type=sparsity_value, metavar="S",
                           help="a calibrated mean sparsity over images, as a fraction (0.35 for 35%%): one "
                                "threshold from the checkpoint's calibration, the app's default mode")
    selection.add_argument("--image-sparsity", type=image_sparsity_value, metavar="S",
                           help="each image's own sparsity, as a fraction (top-k per image)")
    parser.add_argument("--sort", choices=SORTS, default="lost",
                        help="most object pixels lost (as a share of the image's) first, or most sparse first "
                             "(default %(default)s)")
    parser.add_argument("--limit", type=int, help="only the first N images (sorted by id)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="images per BAViT batch (default %(default)s)")
    parser.add_argument("--top", type=int, default=10, help="rows printed (default %(default)s; the files hold all)")
    parser.add_argument("--backend", choices=("onnxruntime", "torch"), default=DEFAULT_BACKEND,
                        help="BAViT as the app runs it (onnxruntime, int8 MatMuls) or in torch float32 "
                             "(default %(default)s)")
    parser.add_argument("--threads", type=int, help="torch (and onnxruntime) CPU threads")
    parser.add_argument("--csv", help="write every row as CSV here")
    parser.add_argument("--json", help="write the setting, the totals and every row as JSON here")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> PruningSettings:
    """The one selection given (``--sparsity``, ``--image-sparsity``, else ``--threshold``) and ``--cca-steps``."""
    if args.sparsity is not None:
        return PruningSettings(sparsity=args.sparsity, cca_steps=args.cca_steps)
    if args.image_sparsity is not None:
        return PruningSettings(image_sparsity=args.image_sparsity, cca_steps=args.cca_steps)
    return PruningSettings(threshold=args.threshold, cca_steps=args.cca_steps)


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.top < 0:
        raise ConfigError(f"--top must be >= 0, got {args.top}")
    settings = settings_from_args(args)
    records = records_from_args(args)[:args.limit]
    split = args.split if args.coco_root else ""
    bavit = args.bavit or DEFAULT_BAVIT_CHECKPOINT
    predictor = Predictor(bavit=bavit, detector=None, backend=args.backend)
    grid = predictor.bavit.config.grid_size
    predictor.select(torch.zeros(1, grid, grid), settings)  # a setting the checkpoint cannot resolve fails now
    started = time.perf_counter()
    predictor.warm_up(detect=False)  # BAViT's runner (the onnxruntime graph is built in memory): timed on its own
    runner_seconds = time.perf_counter() - started
    started, first_batch, scanned = time.perf_counter(), None, []
    for batch in scan_images(predictor, records, split=split, batch_size=args.batch_size,
                             progress=not args.no_progress):
        scanned += batch
        first_batch = time.perf_counter() - started if first_batch is None else first_batch
    scan_seconds = time.perf_counter() - started
    started = time.perf_counter()
    rows = cost_rows(scanned, settings, predictor, sort=args.sort)
    rows_seconds = time.perf_counter() - started
    threshold = rows[0].threshold if rows else None
    print(f"## {setting_words(settings, threshold)}: {len(rows)} images, by {args.sort} (most first)\n")
    print(format_costs(rows, args.top), end="")
    annotations, images_dir = coco_split(args.coco_root, args.split) if args.coco_root else (args.ann, args.images)
    write_costs(rows, settings, args.csv, args.json, bavit=str(bavit), backend=bavit_graph_name(args.backend),
                annotations=str(annotations), images_dir=str(images_dir), split=split,
                image_size=predictor.image_size, grid=predictor.yolos_grid, sort=args.sort,
                threads=torch.get_num_threads(),
                seconds={"runner": runner_seconds, "first_batch": first_batch, "scan": scan_seconds,
                         "cost_rows": rows_seconds})
    for path in (args.csv, args.json):
        if path:
            print(f"wrote {path}")
    return 0
