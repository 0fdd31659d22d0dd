"""``python -m bavit train``: the flags, mapped to :func:`bavit.engine.train.train_and_copy`."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..core.config import PRESETS, STEMS
from ..data.ade20k import CLASS_SETS, OTHER, ade20k_records
from ..engine.train import TrainConfig, model_config_for, train_and_copy
from .common import add_dataset_arguments, records_from_args, subset_description


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a BAViT token classifier",
                                   description="Train BAViT with the accumulative cross-entropy (Adam + StepLR).")
    add_dataset_arguments(parser, default_split="train2017", default_subset="all")
    parser.add_argument("--model", choices=sorted(PRESETS), default="small", help="small = 2 layers, large = 10")
    parser.add_argument("--depth", type=int, help="override the preset's depth")
    parser.add_argument("--stem", choices=list(STEMS), default="patch", help="token embedding (default patch)")
    parser.add_argument("--img-size", type=int, default=384)
    parser.add_argument("--embed-dim", type=int, help="override the preset's token width (192)")
    parser.add_argument("--heads", type=int, help="override the preset's attention heads (3); must divide the width")
    parser.add_argument("--init", default="random", help="random | timm:NAME | yolos:ID_OR_DIR | bavit:PATH | lite0:package | lite0:hub (with --stem lite0 or lite0-4)")
    parser.add_argument("--labels", choices=["mask", "boxes"], default="mask", help="label source")
    parser.add_argument("--box-rule", choices=["coverage", "iou"], default="coverage")
    parser.add_argument("--box-tau", type=float, default=TrainConfig.box_tau,
                        help="--labels boxes: a patch is FG when its box score is >= this (paper Eq. 1)")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="per process")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    parser.add_argument("--step-size", type=int, default=TrainConfig.step_size)
    parser.add_argument("--gamma", type=float, default=TrainConfig.gamma)
    parser.add_argument("--class-weights", type=float, nargs=2, metavar=("BG", "FG"), help="off by default")
    parser.add_argument("--rank-weight", type=float, default=0.0,
                        help="add the patch ranking loss (object fraction order within each image) with this weight; "
                             "0 (default) is the paper's loss alone")
    parser.add_argument("--teacher", nargs="+", default=(), metavar="CKPT",
                        help="distil from these BAViT checkpoints (their mean FG probability on each augmented view)")
    parser.add_argument("--distill-weight", type=float, default=TrainConfig.distill_weight,
                        help="with --teacher: loss = (1 - w) * CE(labels) + w * CE(teacher) (default %(default)s)")
    parser.add_argument("--objective", choices=("labels", "mim"), default=TrainConfig.objective,
                        help="labels: the token labels (the paper); mim: self-supervised masked image modelling "
                             "(SimMIM: predict the pixels of hidden 32x32 blocks; no labels), to pre-train for "
                             "--init bavit:OUT/last.safetensors")
    parser.add_argument("--mask-ratio", type=float, default=TrainConfig.mask_ratio, help="mim: share of blocks hidden")
    parser.add_argument("--freeze-trunk", type=int, default=None, metavar="N",
                        help="--stem lite0 / lite0-4: freeze its stem and first N of its 5 / 4 stages (all: the whole "
                             "trunk; default none)")
    parser.add_argument("--trunk-lr-scale", type=float, default=1.0,
                        help="--stem lite0 / lite0-4: the trunk's learning rate is --lr times this (default 1)")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--drop-path", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--limit", type=int, help="use only the first N images")
    ade = parser.add_argument_group("ADE20K scenes (bavit.data.ade20k): alone, or mixed into the dataset above")
    ade.add_argument("--ade-root", help="ADE20K folder (images/, masks/, categories.json)")
    ade.add_argument("--ade-classes", choices=CLASS_SETS, default="coco",
                     help="object classes: coco = the COCO-like things (default), things = all 100")
    ade.add_argument("--ade-other", choices=OTHER, default="background",
                     help="the unlabelled value 0: background (default) or ignore")
    ade.add_argument("--ade-limit", type=int, default=None, help="use only the first N ADE20K images")
    parser.add_argument("--out", default="runs/bavit", help="folder for checkpoints and metrics.jsonl")
    parser.add_argument("--output", help="also copy the final checkpoint to this .safetensors path")
    parser.add_argument("--resume", action="store_true",
                        help="continue after the last complete epoch (OUT/last.train-state.safetensors)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def data_source(args: argparse.Namespace, images: int) -> str:
    """The primary dataset in words, as the checkpoint records it: ``"coco train2017 fit (fold 2 of 5, seed 0): 273
    images"``."""
    if getattr(args, "voc_root", None):
        name = f"voc {args.image_set}"
    elif getattr(args, "ann", None):
        name = f"coco-format {Path(args.ann).name}"
    else:
        name = f"coco {args.split}"
    return f"{name} {subset_description(args)}: {images} images" + (f" (--limit {args.limit})" if args.limit else "")


def run(args: argparse.Namespace) -> int:
    model_config = model_config_for(args.model, args.depth, args.stem, args.img_size, args.drop_path,
                                    args.embed_dim, args.heads)
    primary = any(getattr(args, name, None) for name in ("coco_root", "ann", "voc_root"))
    records = records_from_args(args) if primary or not args.ade_root else []
    if args.limit:
        records = records[: args.limit]
    data = [data_source(args, len(records))] if records else []
    if args.ade_root:  # alone: ADE20K only (e.g. pre-training for --init bavit:); with a dataset: mixed in
        scenes = ade20k_records(args.ade_root, args.ade_classes, args.ade_other)[: args.ade_limit]
        records += scenes
        data.append(f"ade20k: {len(scenes)} scenes, --ade-classes {args.ade_classes}, --ade-other {args.ade_other}")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      step_size=args.step_size, gamma=args.gamma,
                      class_weights=tuple(args.class_weights) if args.class_weights else None,
                      rank_weight=args.rank_weight, teachers=tuple(args.teacher),
                      distill_weight=args.distill_weight, objective=args.objective, mask_ratio=args.mask_ratio,
                      augment=not args.no_augment, label_source=args.labels, box_rule=args.box_rule,
                      box_tau=args.box_tau, seed=args.seed, workers=args.workers, init=args.init,
                      freeze_trunk=args.freeze_trunk, trunk_lr_scale=args.trunk_lr_scale, data="; ".join(data))
    written = train_and_copy(records, model_config, cfg, args.out, output=args.output, resume=args.resume,
                             progress=not args.no_progress)
    if written is not None:
        print(f"wrote {args.output}")
    return 0
