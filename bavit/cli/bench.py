"""``python -m bavit bench``: the flags, mapped to :func:`bavit.bench.latency.run_bench`, and its table printed."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..bench import latency
from ..bench.latency import DEFAULT_SPARSITIES, format_table, plot
from ..bench.timing import DEFAULT_IMAGES
from ..deploy.runtime import BACKENDS, DEFAULT_BACKEND
from ..errors import ConfigError
from ..pruning.detector import DEFAULT_DETECTOR
from .common import note_omp_wait_policy, print_and_write


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="CPU latency: dense YOLOS-tiny vs BAViT + CCA + pruned YOLOS-tiny",
        description="CPU latency of dense YOLOS-tiny vs BAViT-small + CCA + pruned YOLOS-tiny at 512x512, batch 1 and "
                    "batch N, at the paper's Table 2 sparsity levels (interleaved runs, medians).")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--plot", help="write the speed-up plot (PNG) here")
    parser.add_argument("--bavit", help="BAViT checkpoint (default: the shipped BAViT-small, else random init)")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR, help="YOLOS hub id or save_pretrained directory")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per level (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="second measurement's batch size (0: skip)")
    parser.add_argument("--sparsity", type=float, nargs="+", default=list(DEFAULT_SPARSITIES),
                        help="fractions of YOLOS patches pruned (default: the paper's Table 2 levels)")
    parser.add_argument("--images", nargs="+", help="folders with real images (default assets/examples)")
    parser.add_argument("--backend", nargs="+", choices=BACKENDS, default=None,
                        help=f"backends to time side by side (default: {DEFAULT_BACKEND} first, then the others; the "
                             "first is the one the targets are checked on)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise ConfigError("--repeats must be >= 1")
    images = [Path(p) for p in args.images] if args.images else DEFAULT_IMAGES
    note_omp_wait_policy("bench")
    backends = args.backend or [DEFAULT_BACKEND, *(name for name in BACKENDS if name != DEFAULT_BACKEND)]
    report = latency.run_bench(threads=args.threads, sparsities=args.sparsity, repeats=args.repeats,
                               warmup=args.warmup, batch=args.batch, bavit=args.bavit, detector=args.detector,
                               images=images, backends=list(dict.fromkeys(backends)))
    print_and_write(report, format_table(report), args.json, args.plot, plot)
    return 0
