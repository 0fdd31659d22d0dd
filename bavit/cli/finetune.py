"""``python -m bavit finetune``: the flags, mapped to :func:`bavit.engine.finetune.finetune_coco`."""
from __future__ import annotations

import argparse

from ..engine.finetune import FinetuneConfig, finetune_coco
from ..pruning.detector import DEFAULT_DETECTOR, YOLOS_SIZE
from .common import add_dataset_arguments, add_setting_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune", help="sparse fine-tuning of YOLOS on FG tokens only",
        description="Fine-tune YOLOS with only the kept (FG) patch tokens, using transformers' YOLOS loss. "
                    "Keep masks come from BAViT + CCA (--bavit) or, without --bavit, from ground-truth boxes.")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR, help="YOLOS hub id or local save_pretrained dir")
    add_dataset_arguments(parser, default_split="train2017", voc=False)
    parser.add_argument("--bavit", help="BAViT checkpoint for the keep masks (default: ground-truth box masks)")
    sparsity = parser.add_mutually_exclusive_group()
    add_setting_arguments(parser, group=sparsity)
    sparsity.add_argument("--keep-ratio", type=float, help="keep this fraction of BAViT patches (top-k)")
    parser.add_argument("--epochs", type=int, default=FinetuneConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=FinetuneConfig.batch_size)
    parser.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    parser.add_argument("--weight-decay", type=float, default=FinetuneConfig.weight_decay)
    parser.add_argument("--image-size", type=int, default=YOLOS_SIZE, help="square YOLOS input side (pixels)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/yolos-finetune", help="folder for checkpoint/ and metrics.jsonl")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint")
    parser.add_argument("--limit", type=int, help="use only the first N images (sorted by id)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = FinetuneConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        image_size=args.image_size, mask_source="bavit" if args.bavit else "gt-boxes",
        threshold=None if args.keep_ratio is not None else args.threshold, keep_ratio=args.keep_ratio,
        cca_steps=args.cca_steps, seed=args.seed, workers=args.workers)
    checkpoint = finetune_coco(args.detector, cfg, args.output, coco_root=args.coco_root, split=args.split,
                               ann=args.ann, images=args.images, limit=args.limit, bavit=args.bavit,
                               resume=args.resume, progress=not args.no_progress)
    print(f"fine-tuned detector: {checkpoint} (use --detector {checkpoint})")
    return 0
