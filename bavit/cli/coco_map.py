"""``python -m bavit map``: the flags, mapped to :func:`bavit.engine.coco_map.map_report`, and its Table 2 printed
(and written as markdown and JSON where asked)."""
from __future__ import annotations

import argparse
import json

from ..deploy.runtime import BACKENDS, DEFAULT_BACKEND
from ..engine.coco_map import DEFAULT_THRESHOLDS, map_report, markdown_table
from ..files import write_text
from ..core.registry import DEFAULT_BAVIT_CHECKPOINT
from ..pruning.detector import DEFAULT_DETECTOR, YOLOS_SIZE
from .common import add_dataset_arguments, add_setting_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "map", help="COCO mAP of dense vs BAViT-pruned YOLOS (Table 2)",
        description="COCO box mAP / AP50 / AP_small, sparsity and token reduction (Eq. 4) of dense YOLOS and of "
                    "BAViT + CCA + pruned YOLOS at each threshold / keep ratio.")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR, help="YOLOS hub id or local save_pretrained dir")
    add_dataset_arguments(parser, default_split="val2017", voc=False)
    parser.add_argument("--bavit", default=None, help="BAViT checkpoint (default: the shipped BAViT-small COCO)")
    parser.add_argument("--thresholds", type=float, nargs="*", default=list(DEFAULT_THRESHOLDS),
                        help="FG-probability thresholds, one row each (default %(default)s)")
    parser.add_argument("--keep-ratios", type=float, nargs="*", default=[],
                        help="target fractions of BAViT patches kept (top-k), one row each")
    add_setting_arguments(parser, threshold=False)
    parser.add_argument("--limit", type=int, help="evaluate only the first N images (sorted by id)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=YOLOS_SIZE, help="square YOLOS input side (pixels)")
    parser.add_argument("--threads", type=int, help="torch (and onnxruntime) CPU threads")
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help="inference backend (default %(default)s)")
    parser.add_argument("--json", help="write the report as JSON here")
    parser.add_argument("--markdown", help="write the markdown table here")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = map_report(args.detector, args.bavit or DEFAULT_BAVIT_CHECKPOINT, coco_root=args.coco_root,
                        split=args.split, ann=args.ann, images=args.images, thresholds=args.thresholds,
                        keep_ratios=args.keep_ratios, cca_steps=args.cca_steps, limit=args.limit,
                        batch_size=args.batch_size, image_size=args.image_size, backend=args.backend,
                        progress=not args.no_progress)
    table = markdown_table(report)
    print(table, end="")
    if args.markdown:
        write_text(args.markdown, table)
    if args.json:
        write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0
