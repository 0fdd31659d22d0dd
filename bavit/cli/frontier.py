"""``python -m bavit frontier``: the flags, mapped to :func:`bavit.bench.frontier.run_frontier`, and its table
printed (and written as JSON and a plot where asked)."""
from __future__ import annotations

import argparse

from ..bench.frontier import DEFAULT_SPARSITY, GRAPHS, format_table, frontier_points, plot, run_frontier
from ..errors import ConfigError
from .common import add_dataset_arguments, note_omp_wait_policy, print_and_write, records_from_args, subset_description


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "frontier", help="the cost-quality frontier of BAViT checkpoints (ms next to YOLOS-tiny, recall at 35%%)",
        description="For each BAViT checkpoint and graph: its ms per image (onnxruntime, batch 1, timed in turn with "
                    "the others and with dense and pruned YOLOS-tiny), its share of the dense detector, token "
                    "accuracy and top-k and calibrated pixel recall at a sparsity on the given images (choose on a "
                    "held-out fold of train2017; report val2017 once).")
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="CKPT", help="BAViT checkpoints")
    parser.add_argument("--labels", nargs="+", help="their names in the table and plot (default: file or run names)")
    parser.add_argument("--graphs", nargs="+", choices=GRAPHS, default=["int8"],
                        help="BAViT graphs to measure each checkpoint on (default int8, what the app runs)")
    add_dataset_arguments(parser, default_split="train2017", default_subset="all")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--sparsity", type=float, default=DEFAULT_SPARSITY, help="target sparsity (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (median reported; default %(default)s)")
    parser.add_argument("--timing-images", type=int, default=8,
                        help="images cycled in the timing: the first N of the set (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime CPU threads (default 2)")
    parser.add_argument("--detector", help="YOLOS hub id or save_pretrained folder to time (default: the YOLOS-tiny "
                                           "architecture at random init; its weights do not change its cost)")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--plot", help="write pixel recall vs BAViT ms (PNG) here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be >= 1")
    if not 0.0 < args.sparsity < 1.0 or args.repeats < 1 or args.timing_images < 1 or args.threads < 1:
        raise ConfigError("--sparsity is in (0, 1); --repeats, --timing-images and --threads are >= 1")
    note_omp_wait_policy("frontier")
    points = frontier_points(args.checkpoint, args.graphs, args.labels)
    records = records_from_args(args)[: args.limit]
    data = f"{len(records)} images of {args.split if args.coco_root else 'the dataset'} {subset_description(args)}"
    report = run_frontier(points, records, args.sparsity, args.threads, args.repeats, args.timing_images, data,
                          args.detector)
    print_and_write(report, format_table(report), args.json, args.plot, plot)
    return 0
