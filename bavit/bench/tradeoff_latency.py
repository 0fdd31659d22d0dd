"""The latency side of ``python -m bavit tradeoff`` (:mod:`.tradeoff`): timing the dense detector, each BAViT and
the pruned detector at a grid of kept counts, all in turn (:func:`time_pipeline`), the kept counts timed
(:func:`count_grid`), and the pruned detector's mean ms over images interpolated at each image's own kept count
(:func:`mean_pruned_ms`). The measured figures are in ``docs/results.md``.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..engine.budget import top_k_mask
from ..errors import ConfigError
from ..predictor import Predictor
from .timing import interleaved_medians

COUNT_STEPS = 8  # the pruned YOLOS is timed at cells * j / COUNT_STEPS kept patches, j = 1..COUNT_STEPS


def count_grid(cells: int, observed: Sequence[int] = (), counts: Optional[Sequence[int]] = None) -> list[int]:
    """Ascending kept counts at which to time the pruned detector.

    Args:
        cells: detector patches (1024 on the 32x32 grid).
        observed: the images' kept counts; the smallest and largest are added, so interpolating never extrapolates.
        counts: the grid to start from (default ``cells * j / 8``: 128, 256, ..., 1024 on 32x32).
    Raises:
        ConfigError: a count outside ``1..cells``.
    """
    grid = set(counts if counts is not None else (round(cells * j / COUNT_STEPS) for j in range(1, COUNT_STEPS + 1)))
    if any(not 1 <= count <= cells for count in grid):
        raise ConfigError(f"kept counts to time must lie in 1..{cells}, got {sorted(grid)}")
    if len(observed):  # at least one patch: an image that keeps none is costed as one that keeps one
        grid |= {max(1, int(min(observed))), max(1, int(max(observed)))}
    return sorted(grid)


def mean_pruned_ms(kept_per_image: Sequence[int], counts: Sequence[int], pruned_ms: Sequence[float]) -> float:
    """Mean over images of the pruned detector's ms, interpolated piecewise linearly over the measured ``(counts,
    pruned_ms)`` at each image's own kept count (clamped to the end points outside them).

    Args:
        kept_per_image: detector patches each image keeps.
        counts: ascending kept counts the detector was timed at; pruned_ms: its median ms at each.
    """
    return float(np.mean(np.interp(np.asarray(kept_per_image, dtype=np.float64), counts, pruned_ms)))


def time_pipeline(timer: Predictor, bavits: Mapping[str, Predictor], image: Image.Image, counts: Sequence[int],
                  repeats: int, warmup: int) -> dict:
    """Median ms of the dense detector, each BAViT and the pruned detector at each kept count, all run in turn
    (:func:`~bavit.bench.timing.interleaved_medians`), batch 1, on one image.

    Args:
        timer: the predictor whose detector runs (``detector_runner``: dense, or pruned on a keep mask of ``count``
            patches, ``[1, 3, 512, 512]`` pixels prepared once, as the bench does).
        bavits: label -> predictor whose ``run_bavit`` (the square resize and the forward) is timed.
    Returns:
        ``{"dense_ms": float, "counts": [...], "pruned_ms": [ms per count], "bavit_ms": {label: ms}}``.
    """
    grid = timer.yolos_grid
    pixels = timer.yolos_pixels(image)
    rng = np.random.default_rng(0)  # which patches are kept does not change the cost, only how many
    masks = {count: torch.from_numpy(top_k_mask(rng.random((grid, grid)), count))[None] for count in counts}
    detector_run = timer.detector_runner
    runs: dict[str, Callable[[], object]] = {"dense": lambda: detector_run(pixels)}
    for label, predictor in bavits.items():
        runs[f"bavit {label}"] = lambda predictor=predictor: predictor.run_bavit(image)
    for count, mask in masks.items():
        runs[f"pruned {count}"] = lambda mask=mask: detector_run(pixels, mask)
    medians = interleaved_medians(runs, repeats, warmup)
    return {"dense_ms": medians["dense"], "counts": list(counts),
            "pruned_ms": [medians[f"pruned {count}"] for count in counts],
            "bavit_ms": {label: medians[f"bavit {label}"] for label in bavits}}
