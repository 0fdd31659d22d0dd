"""Padded vs per-image pruned YOLOS runs for a batch with different kept counts per image (CPU timings in ms).

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.batch_modes \
        [--threads 2] [--batch 8] [--repeats 5]

(Without ``OMP_WAIT_POLICY=PASSIVE`` on a busy shared CPU, spinning OpenMP threads dominate the timings.)

The numbers chose ``bavit.pruning.yolos.DEFAULT_BATCH_MODE``; see that module's docstring.
"""
from __future__ import annotations

import argparse
import sys

import torch

from bavit.bench.timing import interleaved_medians, spread_counts
from bavit.cli import run_script
from bavit.pruning.detector import YOLOS_SIZE, random_yolos_tiny, yolos_grid
from bavit.pruning.keep_mask import kept_count
from bavit.pruning.yolos import patch_yolos


def spread_keep_masks(batch: int, kept_mean: int, grid: int, spread: float = 0.10, seed: int = 0) -> torch.Tensor:
    """``bool [batch, grid, grid]`` random masks with the bench's kept-count spread around ``kept_mean``."""
    cells = grid * grid
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, cells, dtype=torch.bool)
    for row, count in enumerate(spread_counts(kept_mean, batch, cells, spread)):
        masks[row, torch.randperm(cells, generator=generator)[:count]] = True
    return masks.reshape(batch, grid, grid)


def run(args: argparse.Namespace) -> int:
    """Median ms of both batch modes at each ``--sparsity``, run in turn after one untimed round
    (:func:`~bavit.bench.timing.interleaved_medians`); torch's threads are set by :func:`bavit.cli.run_command`."""
    model = patch_yolos(random_yolos_tiny())
    grid = yolos_grid(model.config.patch_size)
    pixels = torch.randn(args.batch, 3, YOLOS_SIZE, YOLOS_SIZE)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, YOLOS-tiny architecture at "
          f"{YOLOS_SIZE}x{YOLOS_SIZE}")
    print("sparsity  padded ms  per_image ms")
    with torch.inference_mode():
        for sparsity in args.sparsity:
            masks = spread_keep_masks(args.batch, kept_count(sparsity, grid), grid)
            runs = {mode: lambda mode=mode: model(pixel_values=pixels, keep_mask=masks, batch_mode=mode)
                    for mode in ("padded", "per_image")}
            medians = interleaved_medians(runs, args.repeats, warmup=1)
            print(f"{sparsity:8.2f}  {medians['padded']:9.0f}  {medians['per_image']:12.0f}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This bench's options."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.29, 0.35, 0.46])


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.batch_modes``; its help is this module's docstring."""
    return run_script("benchmarks.batch_modes", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
