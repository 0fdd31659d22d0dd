"""What the benches share: the one way a call is timed (:func:`timed_ms`, after untimed warm-up calls) and calls
timed in turn (:func:`interleaved_medians`, medians in ms), peak RSS, the notes a report carries about the machine and
the detector weights, the images a bench runs on (:func:`find_images`) and the kept-count spread of a batch
(:func:`spread_counts`). Used by :mod:`.latency`, :mod:`.tradeoff`, :mod:`.frontier`, :mod:`.static_int8` and the
app benchmarks in the repository's ``benchmarks/`` (``app_bench``, ``batch_modes``).
"""
from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..imageio import load_image
from . import EXAMPLES

if TYPE_CHECKING:
    from ..predictor import Predictor

DEFAULT_IMAGES = (EXAMPLES,)


def median_ms(samples: Sequence[float]) -> float:
    """Median of ``samples`` (seconds) in ms."""
    return float(statistics.median(samples)) * 1000.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed_ms(calls: Sequence[Callable[[], object]], warmup: int = 0) -> list[float]:
    """ms of each of ``calls``, run in order, but for the first ``warmup`` (run, not timed)."""
    timings = []
    for index, call in enumerate(calls):
        start = time.perf_counter()
        call()
        if index >= warmup:
            timings.append((time.perf_counter() - start) * 1000.0)
    return timings


def interleaved_medians(runs: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median ms of each call in ``runs``, run in turn round after round (``warmup`` untimed rounds first), so that
    load on a shared machine falls on every call alike rather than on whichever ran during a busy spell."""
    names = list(runs)
    timings = timed_ms([runs[name] for _ in range(warmup + repeats) for name in names], warmup * len(names))
    return {name: float(statistics.median(timings[index::len(names)])) for index, name in enumerate(names)}


def detector_weights(predictor: Predictor, detector: str) -> str:
    """Which detector weights a predictor times: pretrained, or the YOLOS-tiny architecture at random init."""
    if predictor.detector_ready:
        return f"{detector} (pretrained)"
    return f"YOLOS-tiny architecture, random init (latency only; {detector} not available here)"


def onnxruntime_version() -> Optional[str]:
    """onnxruntime's version, None where it is not installed."""
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:
        return None


def machine_info(load_before: tuple[float, float, float]) -> dict:
    """Versions, CPUs, OpenMP wait policy and load averages (before: ``load_before``, after: now) for a report."""
    return {
        "torch": torch.__version__,
        "onnxruntime": onnxruntime_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default: spin, then sleep)"),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def find_images(count: int, sources: Sequence[Path] = DEFAULT_IMAGES) -> list:
    """``count`` RGB images from the first folder that has any (cycled), else synthetic noise images."""
    for source in sources:
        files = sorted(p for p in Path(source).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if files:
            return [load_image(files[i % len(files)]) for i in range(count)]
    rng = np.random.default_rng(0)
    return [load_image(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(count)]


def spread_counts(mean_kept: int, batch: int, cells: int, spread: float = 0.10) -> list[int]:
    """Per-image kept counts spread evenly over +-``spread`` of the grid around ``mean_kept``.

    The spread narrows near 0 and ``cells`` so the mean stays ``mean_kept`` (0% sparsity: every image keeps all).
    """
    half_width = min(spread * cells, cells - mean_kept, mean_kept)
    offsets = np.linspace(-half_width, half_width, batch) if batch > 1 else np.zeros(1)
    return [int(round(mean_kept + offset)) for offset in offsets]
