"""The app's background latency timing: :class:`LatencyMonitor`, the :class:`~bavit.app.latency.LatencyWindows`
that also times the shared Predictor's models itself, in daemon threads (no Gradio here).

Why in the background: page requests run neither dense YOLOS (except once per image for "Show dense") nor BAViT
(cached per image), so without it the page could never show a speed-up. :meth:`LatencyMonitor.start` warms the
models up (:data:`UNTIMED_RUNS` untimed cold runs; the onnxruntime export takes seconds), then times
:data:`DENSE_RUNS` dense and :data:`BAVIT_RUNS` BAViT runs, interleaved, then the pruned detector :data:`CURVE_RUNS`
times at each of :data:`CURVE_COUNTS` kept patches (the start-up curve). The page is served meanwhile and says
"warming up". While the app is used, dense and BAViT are re-timed (one run each, at most every :data:`REFRESH_S`
seconds), so the dense and the pruned medians come from the same seconds of this machine's load, as the benchmark's
interleaved runs do. Every background run waits until no request has run for :data:`SETTLE_S` seconds, so the page
answers first.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..predictor import Analysis, Predictor
from .latency import SERIES, LatencyWindows

DENSE_RUNS, BAVIT_RUNS, UNTIMED_RUNS = 6, 5, 2  # the warm-up's timed runs, and its untimed cold runs first
CURVE_COUNTS = (64, 192, 320, 448, 576, 704, 832, 960)  # kept patches of the start-up curve (of 1024)
CURVE_RUNS = 3  # rounds over CURVE_COUNTS (interleaved, so drift hits every count alike)
REFRESH_S = 3.0  # s: while the app is used, dense and BAViT are re-timed at most this often (about 6% of the CPU)
SETTLE_S = 0.3  # s: background runs wait this long after the app's last measured run (its drawing and encoding)


def time_pruned(predictor: Predictor, image: Image.Image, analysis: Analysis) -> Analysis:
    """``analysis`` (of ``image``, made without detector weights) with the pruned detector's latency at its keep mask,
    measured on ``predictor.latency_model``: the YOLOS-tiny architecture at random init, whose outputs are dropped,
    never drawn. The app's latency panel and API then show a speed-up even without weights."""
    start = time.perf_counter()
    pixels = predictor.yolos_pixels(image)
    preprocessed = time.perf_counter()
    predictor.run_detector(pixels, torch.from_numpy(analysis.keep_mask)[None])
    end = time.perf_counter()
    timings = {**analysis.timings_ms, "preprocess_ms": (preprocessed - start) * 1000.0,
               "pruned_ms": (end - preprocessed) * 1000.0}
    timings["total_ms"] += (end - start) * 1000.0
    return dataclasses.replace(analysis, timings_ms=timings)


class LatencyMonitor(LatencyWindows):
    """Latency windows (:class:`~bavit.app.latency.LatencyWindows`) fed by the app's requests and by background
    runs of ``predictor``'s models (its ``warm_up``, ``run_bavit``, ``run_detector``, ``yolos_pixels``; the
    detector is timed only when ``predictor.detector_requested``). Not started until :meth:`start`.
    """

    def __init__(self, predictor: Predictor):
        super().__init__()
        self.predictor = predictor
        self.error: str | None = None  # why the background timing stopped early, if it did
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None  # the warm-up
        self._refresher: threading.Thread | None = None
        self._last_refresh = float("-inf")
        self._inputs: tuple[Image.Image, torch.Tensor | None] | None = None  # what the warm-up ran on, once done

    @property
    def warming_up(self) -> bool:
        """True while the background warm-up runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> LatencyMonitor:
        """Start the warm-up in a daemon thread (returns at once; a second call does nothing)."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._background, args=(self._warm_up,),
                                                name="bavit-latency-warm-up", daemon=True)
                self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the warm-up to finish; True when it has (or never started)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.warming_up

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop the warm-up and any refresh after their current run and wait for them; True when both stopped."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            refresher = self._refresher
        if refresher is not None:
            refresher.join(timeout)
        return self.join(timeout) and not (refresher is not None and refresher.is_alive())

    def _background(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:  # the app must stay up: the page then says why there is no speed-up
            self.error = f"{exc.__class__.__name__}: {exc}"

    def _timed(self, function: Callable[..., Any], *args: Any) -> tuple[float, bool] | None:
        """``(ms, overlapped)`` of one background call, made once no app run is measured and the last one ended
        :data:`SETTLE_S` ago (its drawing and encoding share the CPU too); ``None`` once stopped."""
        with self._cond:
            while not self._stop.is_set():
                busy = any(run.app for run in self._active)
                wait = SETTLE_S - (time.monotonic() - self._last_app_end)
                if not busy and wait <= 0:
                    break
                self._cond.wait(None if busy else wait)
            if self._stop.is_set():
                return None
        with self.measuring(app=False) as run:
            start = time.perf_counter()
            function(*args)
            ms = (time.perf_counter() - start) * 1000.0
        return ms, run.overlapped

    def _time_into(self, series: str, function: Callable[..., Any], *args: Any, kept: int = 0) -> bool | None:
        """Time one background run into ``series``: True when kept (not overlapped), ``None`` once stopped."""
        timed = self._timed(function, *args)
        if timed is None:
            return None
        self.add(series, *timed, kept=kept)
        return not timed[1]

    def _app_run_ended(self) -> None:
        """Once the warm-up is done and the newest dense / BAViT run is :data:`REFRESH_S` old, re-time both in a
        short background thread (one at a time, at most one every :data:`REFRESH_S`)."""
        with self._cond:
            now = time.monotonic()
            newest = max((self._samples[s][-1][0] for s in ("dense", "bavit") if self._samples[s]),
                         default=float("-inf"))
            if (self._inputs is None or self._stop.is_set() or (self._refresher and self._refresher.is_alive())
                    or now - newest < REFRESH_S or now - self._last_refresh < REFRESH_S):
                return
            self._last_refresh = now
            self._refresher = threading.Thread(target=self._background, args=(self._refresh,),
                                               name="bavit-latency-refresh", daemon=True)
            self._refresher.start()

    def _refresh(self) -> None:
        image, pixels = self._inputs
        if pixels is None or self._time_into("dense", self.predictor.run_detector, pixels) is not None:
            self._time_into("bavit", self.predictor.run_bavit, image)

    def _warm_up(self) -> None:
        predictor = self.predictor
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
        detect = bool(predictor.detector_requested)
        pixels = predictor.yolos_pixels(image) if detect else None
        grid = predictor.yolos_grid
        order = torch.randperm(grid * grid, generator=torch.Generator().manual_seed(0))
        masks = {}  # kept count -> [1, grid, grid] keep mask of that many random patches
        for count in CURVE_COUNTS:
            keep = torch.zeros(grid * grid, dtype=torch.bool)
            keep[order[:min(count, grid * grid)]] = True
            masks[count] = keep.view(1, grid, grid)
        predictor.warm_up(detect=detect)  # builds the backend's runners (the onnxruntime export)
        untimed = [(predictor.run_bavit, image)]
        if detect:
            middle = masks[CURVE_COUNTS[len(CURVE_COUNTS) // 2]]
            untimed += [(predictor.run_detector, pixels), (predictor.run_detector, pixels, middle)]
        for _ in range(UNTIMED_RUNS):
            for function, *args in untimed:
                if self._timed(function, *args) is None:
                    return
        with self._cond:
            self._cold.difference_update(SERIES if detect else ("bavit",))
        # Timed BAViT and dense runs, interleaved; an overlapped run is retried (at most twice as many rounds).
        left = {"bavit": BAVIT_RUNS, "dense": DENSE_RUNS if detect else 0}
        calls = {"bavit": (predictor.run_bavit, image), "dense": (predictor.run_detector, pixels)}
        for _ in range(2 * sum(left.values())):
            for series in [series for series, runs in left.items() if runs]:
                kept = self._time_into(series, *calls[series])
                if kept is None:
                    return
                left[series] -= kept
        if detect:  # the start-up curve; an overlapped run is retried up to twice
            for _ in range(CURVE_RUNS):
                for count, keep in masks.items():
                    for _attempt in range(3):
                        timed = self._timed(predictor.run_detector, pixels, keep)
                        if timed is None:
                            return
                        self.add("pruned", *timed, kept=count)
                        if not timed[1]:
                            with self._cond:
                                self._curve.setdefault(count, []).append(timed[0])
                            break
        with self._cond:
            self._curve_ready = detect
            self._inputs = (image, pixels)
