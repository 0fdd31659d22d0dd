"""``python -m bavit <command>``: argument parsing only; every command calls into the library."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import BAViTError
from .imageio import allow_large_images

# Each module exposes ``register(subparsers)`` that adds its sub-command and sets ``func(args) -> int``.
COMMAND_MODULES = ("engine.train", "engine.evaluate", "engine.calibrate", "bench.latency", "engine.coco_map",
                   "engine.finetune", "bench.app_bench", "deploy.export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bavit", description="BAViT: background-aware token pruning for ViT detectors.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"bavit.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    allow_large_images()
    parser = build_parser()
    args = parser.parse_args(argv)
    threads = getattr(args, "threads", None)
    if threads is not None:  # every command's --threads: a process-wide setting, made here only
        if threads < 1:
            parser.error("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)
    try:
        return int(args.func(args) or 0)
    except BAViTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
