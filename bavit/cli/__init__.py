"""``python -m bavit <command>``: the parser, the output checks and the error handling that every command shares.

Each command is one module of this package (:data:`COMMAND_MODULES`) holding its ``register(subparsers)`` (the
argparse) and ``run(args)`` (maps the arguments to library calls and prints the result); the library (``bavit.engine``,
``bavit.bench``, ``bavit.deploy`` ...) never imports from here. :mod:`.common` holds what several commands share.
:func:`run_command` is the one way a parsed command runs (settings, output checks, errors); a command of its own (the
app benchmarks in the repository's ``benchmarks/``) runs through it with :func:`run_script`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from ..deploy.export import check_out_dir
from ..errors import BAViTError
from ..files import check_output_dir, check_output_file
from ..imageio import allow_large_images
from . import bench, calibrate, coco_map, costs, evaluate, export, finetune, frontier, tradeoff, train

# Each module exposes ``register(subparsers)`` that adds its sub-command and sets ``func(args) -> int``; in this order.
COMMAND_MODULES = (train, evaluate, calibrate, bench, tradeoff, frontier, coco_map, costs, finetune, export)

# What each command writes, checked before it starts (bavit.files.check_output_*: the write's first step is tried),
# so that a path that cannot be written fails at once in one line, not in a traceback after minutes of work.
# dest -> "file" (written with atomic_path), "folder" (created if needed and written into) or "export" (a folder
# replaced whole: bavit.deploy.export.check_out_dir). REPORTS apply to every command that has them.
REPORTS = {"json": "file", "markdown": "file", "plot": "file"}
OUTPUTS = {
    "train": {"out": "folder", "output": "file"},
    "finetune": {"output": "folder"},
    "calibrate": {"checkpoint": "file"},  # rewritten in place with its calibration
    "costs": {"csv": "file"},
    "export": {"out": "export"},
}


def build_parser() -> argparse.ArgumentParser:
    # `bavit` when run as the installed command (pyproject.toml), else `python -m bavit`
    prog = "bavit" if os.path.basename(sys.argv[0]) == "bavit" else "python -m bavit"
    parser = argparse.ArgumentParser(prog=prog, description="BAViT: background-aware token pruning for ViT detectors.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def check_outputs(args: argparse.Namespace) -> None:
    """Raise a one-line :class:`BAViTError` if any path the command in ``args`` writes cannot be written."""
    for dest, kind in {**REPORTS, **OUTPUTS.get(getattr(args, "command", None), {})}.items():
        path = getattr(args, dest, None)
        if path is None:
            continue
        option = "--" + dest.replace("_", "-")
        if kind == "file":
            check_output_file(path, option)
        elif kind == "folder":
            check_output_dir(path, option)
        else:
            check_out_dir(path, option)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


def run_script(prog: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
               run: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    """A command of its own, ``python -m PROG`` (a benchmark of ``benchmarks/``): its parser, with ``description`` as
    written (a module docstring) and the options ``add_arguments`` adds, run by :func:`run_command` with ``run`` as
    its work."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)
    return run_command(parser, argv)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` with ``parser`` and run the ``func(args) -> int`` it sets: the process-wide settings first (large
    images allowed, ``--threads``), then the output checks (:func:`check_outputs`), then the work; a user error is one
    line on stderr and exit code 2."""
    allow_large_images()
    args = parser.parse_args(argv)
    threads = getattr(args, "threads", None)
    if threads is not None:  # every command's --threads: a process-wide setting, made here only
        if threads < 1:
            parser.error("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)
    try:
        check_outputs(args)
        return int(args.func(args) or 0)
    except BAViTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the checks could not foresee (disk full, a folder removed meanwhile)
        if exc.filename is None:
            raise
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
