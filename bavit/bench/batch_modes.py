"""Padded vs per-image pruned YOLOS runs for a batch with different kept counts per image (CPU timings in ms).

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 .venv/bin/python -m bavit.bench.batch_modes \
        [--threads 2] [--batch 8] [--repeats 5]

(Without ``OMP_WAIT_POLICY=PASSIVE`` on a busy shared CPU, spinning OpenMP threads dominate the timings.)

The numbers chose ``bavit.pruning.yolos.DEFAULT_BATCH_MODE``; see that module's docstring.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ..pruning.detector import YOLOS_SIZE, yolos_grid
from ..pruning.detector import random_yolos_tiny
from ..pruning.keep_mask import kept_count
from ..pruning.yolos import patch_yolos
from .latency import spread_counts


def spread_keep_masks(batch: int, kept_mean: int, grid: int, spread: float = 0.10, seed: int = 0) -> torch.Tensor:
    """``bool [batch, grid, grid]`` random masks with the bench's kept-count spread around ``kept_mean``."""
    cells = grid * grid
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, cells, dtype=torch.bool)
    for row, count in enumerate(spread_counts(kept_mean, batch, cells, spread)):
        masks[row, torch.randperm(cells, generator=generator)[:count]] = True
    return masks.reshape(batch, grid, grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.29, 0.35, 0.46])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = patch_yolos(random_yolos_tiny())
    grid = yolos_grid(model.config.patch_size)
    pixels = torch.randn(args.batch, 3, YOLOS_SIZE, YOLOS_SIZE)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, YOLOS-tiny architecture at "
          f"{YOLOS_SIZE}x{YOLOS_SIZE}")
    print("sparsity  padded ms  per_image ms")
    with torch.inference_mode():
        for sparsity in args.sparsity:
            masks = spread_keep_masks(args.batch, kept_count(sparsity, grid), grid)
            times = {"padded": [], "per_image": []}
            for mode in times:  # warm-up
                model(pixel_values=pixels, keep_mask=masks, batch_mode=mode)
            for _ in range(args.repeats):
                for mode in times:
                    start = time.perf_counter()
                    model(pixel_values=pixels, keep_mask=masks, batch_mode=mode)
                    times[mode].append((time.perf_counter() - start) * 1000)
            print(f"{sparsity:8.2f}  {statistics.median(times['padded']):9.0f}  {statistics.median(times['per_image']):12.0f}")


if __name__ == "__main__":
    main()
