"""``python -m bavit tradeoff``: the flags, mapped to :func:`bavit.bench.tradeoff.run_tradeoff`, and its table
printed."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..bench import tradeoff
from ..bench.tradeoff import BAVIT_METHODS, DEFAULT_LEVELS, DEFAULT_METHODS, format_table, plot
from ..deploy.runtime import BACKENDS, DEFAULT_BACKEND
from ..errors import ConfigError
from ..pruning.detector import DEFAULT_DETECTOR
from .common import add_dataset_arguments, note_omp_wait_policy, print_and_write, records_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tradeoff", help="object pixel recall vs end-to-end latency (BAViT included) per BAViT checkpoint",
        description="Object pixel recall against mean end-to-end latency (BAViT + pruned YOLOS-tiny, batch 1) of one "
                    "or more calibrated BAViT checkpoints at target sparsities, with dense YOLOS-tiny for reference.")
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="CKPT",
                        help="calibrated BAViT checkpoints (python -m bavit calibrate)")
    parser.add_argument("--labels", nargs="+", help="their names in the table and plot (default: file names)")
    add_dataset_arguments(parser, default_split="val2017", default_subset="all")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--levels", type=float, nargs="+", default=list(DEFAULT_LEVELS), metavar="S",
                        help="target sparsities (fractions of the YOLOS patches pruned; default %(default)s)")
    parser.add_argument("--methods", nargs="+", choices=BAVIT_METHODS, default=list(DEFAULT_METHODS),
                        help="keep-mask methods (default: %(default)s)")
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help="runs BAViT and the detector (default %(default)s)")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR,
                        help="YOLOS hub id or save_pretrained directory (without weights: the YOLOS-tiny architecture "
                             "at random init; latency does not depend on the weights)")
    parser.add_argument("--counts", type=int, nargs="+", metavar="N",
                        help="kept counts to time the pruned YOLOS at (default 128, 256, ..., 1024; the images' "
                             "smallest and largest are added)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime CPU threads (default 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="BAViT batch for the probabilities")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--plot", help="write recall vs end-to-end latency (PNG) here")
    parser.set_defaults(func=run)


def _dataset_name(args: argparse.Namespace) -> str:
    """The dataset as the report names it: VOC image set, ``--ann`` file or COCO split, with the subset."""
    if args.voc_root:
        name = f"VOC {args.image_set}"
    elif args.ann:
        name = Path(args.ann).name
    else:
        name = f"COCO {args.split}"
    return name if args.subset == "all" else f"{name} ({args.subset})"


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be >= 1")
    note_omp_wait_policy("tradeoff")
    records = records_from_args(args)[: args.limit]
    report = tradeoff.run_tradeoff(args.checkpoint, records, labels=args.labels, levels=args.levels,
                                   methods=args.methods, backend=args.backend, detector=args.detector,
                                   counts=args.counts, repeats=args.repeats, warmup=args.warmup,
                                   batch_size=args.batch_size, dataset=_dataset_name(args))
    print_and_write(report, format_table(report), args.json, args.plot, plot)
    return 0
