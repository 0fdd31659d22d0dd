"""``python -m bavit evaluate``: the flags, mapped to :func:`bavit.engine.evaluate.evaluate_checkpoint`, and its
markdown tables printed."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..core.checkpoint import read_checkpoint
from ..engine.budget import DEFAULT_LEVELS, format_budget, plot_budget
from ..engine.evaluate import evaluate_checkpoint, format_sweep, format_table
from ..files import write_text
from .common import add_dataset_arguments, add_setting_arguments, records_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="token metrics of a BAViT checkpoint",
                                   description="Evaluate a BAViT checkpoint: token accuracy, balanced accuracy, FG "
                                               "precision/recall/IoU and object keep rate, before and after CCA.")
    parser.add_argument("--checkpoint", required=True, help="BAViT .safetensors checkpoint")
    add_dataset_arguments(parser, default_split="val2017", default_subset="all")
    parser.add_argument("--sweep", type=float, nargs="+", default=(), metavar="T",
                        help="also report these thresholds (same predictions), before and after CCA")
    add_setting_arguments(parser)
    parser.add_argument("--labels", choices=["mask", "boxes"], default="mask")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--sparsity", type=float, nargs="+", default=list(DEFAULT_LEVELS), metavar="S",
                        help="pruning quality at these target sparsities (fractions of the YOLOS patches pruned; "
                             "default: the paper's Table 2 levels %(default)s)")
    parser.add_argument("--plot", help="write object pixel recall vs mean sparsity per method (PNG) here")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                        help="run BAViT with torch or as its ONNX export in onnxruntime (default %(default)s)")
    parser.add_argument("--float32", action="store_true",
                        help="with --backend onnxruntime: the float32 graph instead of the int8-MatMul one")
    parser.add_argument("--json", help="write the metrics here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checkpoint = read_checkpoint(args.checkpoint)
    records = records_from_args(args)
    result, calibration, grid = evaluate_checkpoint(
        checkpoint, records, args.threshold, args.cca_steps, args.batch_size, args.labels,
        sweep=args.sweep, levels=args.sparsity, curve=bool(args.plot), backend=args.backend, float32=args.float32)
    print(format_table(result, title=f"## {Path(args.checkpoint).name} ({checkpoint.config.depth} layers)"))
    if result["sweep"]:
        print("\n" + format_sweep(result))
    note = ("no calibration in this checkpoint (python -m bavit calibrate adds one): calibrated methods left out"
            if calibration is None
            else f"calibration: {calibration.images} images, {calibration.source}, BAViT in {calibration.backend}")
    print(f"\n## Pruning quality at a budget ({grid}x{grid} YOLOS grid; {note})\n")
    print(format_budget(result["budget"]))
    if args.plot:
        plot_budget(result["budget_curve"], args.plot, title=f"{Path(args.checkpoint).name}: {len(records)} images")
        print(f"wrote {args.plot}")
    if args.json:
        write_text(args.json, json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0
