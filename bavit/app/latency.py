"""Live latency for the app: medians of warm runs on this machine, never a single cold timing (no Gradio here).

A :class:`LatencyMonitor` wraps the shared :class:`~bavit.predictor.Predictor`'s timed primitives
(``run_bavit``, ``run_detector``). :meth:`LatencyMonitor.start` warms the models up in a background daemon thread:
a few untimed runs (and the backend's runners built: the onnxruntime export takes seconds), then timed dense and
BAViT runs, then a short start-up calibration of the pruned detector at :data:`CURVE_COUNTS` kept patches (the
machine's latency curve, ms against kept tokens). The app's own requests feed the same rolling windows (each slider
change times one pruned run). While the app is in use, dense YOLOS and BAViT are re-timed in the background (one run
each, at most every :data:`REFRESH_S` seconds, when no request is running), so the dense and the pruned medians come
from the same seconds of this machine's load, as the benchmark's interleaved runs do.

Rules (one home for them):

- the first sample of each series (dense, BAViT, pruned) is the cold run and is dropped, unless the warm-up has
  already run that model untimed;
- a sample whose run overlapped another measured run (the warm-up and a request, or two requests, sharing the CPU)
  is dropped: it is the contention, not the model. Background runs wait until no request has run for
  :data:`SETTLE_S` seconds (so the page answers first, and its drawing and encoding do not slow them down);
- :meth:`dense_ms` is the median of at least :data:`MIN_DENSE_RUNS` warm runs, :meth:`bavit_ms` of at least
  :data:`MIN_BAVIT_RUNS`; :meth:`pruned_ms` is the median of the recent warm runs within :data:`KEPT_TOLERANCE`
  patches of the kept count (at least :data:`MIN_PRUNED_RUNS` of them), else the start-up curve interpolated;
  each median is over the newest :data:`WINDOW` runs of the last :data:`MAX_AGE_S` seconds when there are enough of
  them, else over the newest :data:`WINDOW` runs of any age;
- :meth:`speedup` = dense / (BAViT + CCA + pruned), ``None`` while any of them is not known yet (the page says
  "warming up").
"""
from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

MIN_DENSE_RUNS = 5  # warm dense runs before the dense median is used
MIN_BAVIT_RUNS = 3
MIN_PRUNED_RUNS = 3  # warm pruned runs near a kept count before their median replaces the start-up curve
KEPT_TOLERANCE = 8  # patches (of 1024): pruned runs this close to a kept count count as "at this kept count"
WINDOW = 15  # the most recent warm samples a median is taken over (dense, BAViT; pruned: near the kept count)
CURVE_COUNTS = (64, 192, 320, 448, 576, 704, 832, 960)  # kept patches of the start-up calibration (of 1024)
SERIES = ("dense", "bavit", "pruned")
MAX_AGE_S = 20.0  # s: medians prefer runs this recent (when there are enough of them): the load of these seconds
REFRESH_S = 3.0  # s: while the app is used, dense and BAViT are re-timed at most this often (about 6% of the CPU)
SETTLE_S = 0.3  # s: background runs wait this long after the app's last measured run (its drawing and encoding)


def _median(samples) -> Optional[float]:
    samples = list(samples)
    return float(statistics.median(samples)) if samples else None


def _pool(samples, minimum: int, now: float) -> list[float]:
    """The ms a median is taken over: of ``samples`` ([(time, ms)], oldest first) the newest :data:`WINDOW` of the
    last :data:`MAX_AGE_S` seconds when there are ``minimum`` of them, else the newest :data:`WINDOW` of any age;
    empty with fewer than ``minimum`` in all."""
    recent = [ms for t, ms in samples if now - t <= MAX_AGE_S]
    pool = recent if len(recent) >= minimum else [ms for _, ms in samples]
    return pool[-WINDOW:] if len(pool) >= minimum else []


def interpolate(curve: list[tuple[int, float]], kept: float) -> Optional[float]:
    """Piecewise-linear ms at ``kept`` patches through ``curve`` ([(kept, ms)], increasing kept), extended linearly
    past both ends (never below half the smallest point); ``None`` with fewer than two points."""
    if len(curve) < 2:
        return None
    xs = np.array([k for k, _ in curve], dtype=np.float64)
    ys = np.array([ms for _, ms in curve], dtype=np.float64)
    if kept < xs[0]:
        value = ys[0] + (kept - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0])
    elif kept > xs[-1]:
        value = ys[-1] + (kept - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    else:
        value = float(np.interp(kept, xs, ys))
    return float(max(value, 0.5 * ys.min()))


@dataclass(frozen=True)
class LatencyEstimate:
    """What the page shows for one image at one kept count (ms are medians of warm runs on this machine)."""

    kept: int  # YOLOS patches kept (of 1024)
    dense_ms: Optional[float]
    bavit_ms: Optional[float]
    cca_ms: float  # the keep-mask rule: the caller's value, else the median of the recent requests' (0 before any)
    pruned_ms: Optional[float]
    pruned_source: str  # "warm runs" (at about this kept count), "start-up curve", or "" (not known yet)
    dense_runs: int  # warm samples behind each median
    bavit_runs: int
    pruned_runs: int
    speedup: Optional[float]  # dense / (BAViT + CCA + pruned); None while warming up
    warming_up: bool  # the background warm-up is still running
    cca_runs: int = 1  # runs behind cca_ms (1: the caller's own)

    @property
    def pipeline_ms(self) -> Optional[float]:
        if self.bavit_ms is None or self.pruned_ms is None:
            return None
        return self.bavit_ms + self.cca_ms + self.pruned_ms

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: the fields plus ``pipeline``; ms keys without the ``_ms`` suffix (``dense``, ``bavit``, ...)."""
        out = {key.removesuffix("_ms"): value for key, value in asdict(self).items()}
        out["pipeline"] = self.pipeline_ms
        return out


class _Run:
    """One measured run; ``overlapped`` turns True when another measured run ran at the same time."""

    __slots__ = ("overlapped", "app")

    def __init__(self, app: bool):
        self.overlapped = False
        self.app = app


class LatencyMonitor:
    """Thread-safe rolling windows of warm latency samples around a Predictor, and a background warm-up.

    Args:
        predictor: the app's :class:`~bavit.predictor.Predictor` (its ``run_bavit``, ``run_detector``,
            ``yolos_pixels``; the detector is timed only when ``predictor.detector_requested``).
        dense_runs, bavit_runs: timed warm-up runs (at least :data:`MIN_DENSE_RUNS` / :data:`MIN_BAVIT_RUNS`).
        curve_counts, curve_runs: the start-up calibration: pruned runs at each kept count (interleaved).
        untimed_runs: cold runs of each model first (dropped).
        image: what the warm-up runs on (latency does not depend on the content); default a fixed noise image.
    """

    def __init__(self, predictor, *, dense_runs: int = 6, bavit_runs: int = 5,
                 curve_counts: tuple[int, ...] = CURVE_COUNTS, curve_runs: int = 3, untimed_runs: int = 2,
                 image: Optional[Image.Image] = None):
        if dense_runs < MIN_DENSE_RUNS or bavit_runs < MIN_BAVIT_RUNS:
            raise ValueError(f"the warm-up needs >= {MIN_DENSE_RUNS} dense and >= {MIN_BAVIT_RUNS} BAViT runs")
        self.predictor = predictor
        self.dense_runs, self.bavit_runs, self.untimed_runs = dense_runs, bavit_runs, untimed_runs
        self.curve_counts, self.curve_runs = tuple(sorted(int(c) for c in curve_counts)), curve_runs
        self.image = image
        self._cond = threading.Condition(threading.Lock())
        self._dense: deque[tuple[float, float]] = deque(maxlen=4 * WINDOW)  # (time.monotonic(), ms), oldest first
        self._bavit: deque[tuple[float, float]] = deque(maxlen=4 * WINDOW)
        self._cca: deque[float] = deque(maxlen=WINDOW)  # keep-mask rule (no model: never cold, never overlapped)
        self._pruned: deque[tuple[float, int, float]] = deque(maxlen=400)  # (time, kept, ms), all kept counts
        self._curve: dict[int, list[float]] = {}  # start-up calibration samples per kept count
        self._curve_ready = False
        self._cold = set(SERIES)  # series whose next sample is a cold first run (dropped)
        self._active: set[_Run] = set()
        self.dropped = {"cold": 0, "overlapped": 0}
        self.error: Optional[str] = None  # why the warm-up stopped early, if it did
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._refresher: Optional[threading.Thread] = None
        self._last_refresh = float("-inf")  # time.monotonic() of the last refresh started
        self._last_app_end = float("-inf")  # time.monotonic() when the app's last measured run ended
        self._inputs: Optional[tuple] = None  # (image, yolos pixels) the warm-up ran on, for refreshes

    # ------------------------------------------------------------------ feeding
    @contextmanager
    def measuring(self, app: bool = True) -> Iterator[_Run]:
        """Bracket a run whose timing will be fed in; ``run.overlapped`` says whether another measured run shared
        the CPU meanwhile (then feed it with ``overlapped=run.overlapped`` and it is dropped)."""
        run = _Run(app)
        with self._cond:
            if self._active:
                run.overlapped = True
                for other in self._active:
                    other.overlapped = True
            self._active.add(run)
        try:
            yield run
        finally:
            with self._cond:
                self._active.discard(run)
                if app:
                    self._last_app_end = time.monotonic()
                self._cond.notify_all()
            if app:
                self._maybe_refresh()

    def _keep(self, series: str, overlapped: bool) -> bool:  # with self._cond held
        if series in self._cold:
            self._cold.discard(series)
            self.dropped["cold"] += 1
            return False
        if overlapped:
            self.dropped["overlapped"] += 1
            return False
        return True

    def add_dense(self, ms: float, overlapped: bool = False) -> None:
        """One dense detector run (ms)."""
        with self._cond:
            if self._keep("dense", overlapped):
                self._dense.append((time.monotonic(), float(ms)))

    def add_bavit(self, ms: float, overlapped: bool = False) -> None:
        """One uncached BAViT run (ms; resize, normalisation and forward)."""
        with self._cond:
            if self._keep("bavit", overlapped):
                self._bavit.append((time.monotonic(), float(ms)))

    def add_pruned(self, kept: int, ms: float, overlapped: bool = False) -> None:
        """One pruned detector run on ``kept`` patches (ms)."""
        with self._cond:
            if self._keep("pruned", overlapped):
                self._pruned.append((time.monotonic(), int(kept), float(ms)))

    def add_cca(self, ms: float) -> None:
        """One run of the keep-mask rule (selection, CCA, resample; ms)."""
        with self._cond:
            self._cca.append(float(ms))

    def mark_warm(self, *series: str) -> None:
        """These models have had their cold run (untimed): their next samples are kept."""
        with self._cond:
            self._cold.difference_update(series)

    # ------------------------------------------------------------------ answers
    def dense_ms(self) -> Optional[float]:
        """Median of the recent warm dense runs; ``None`` before :data:`MIN_DENSE_RUNS` of them."""
        with self._cond:
            return _median(_pool(self._dense, MIN_DENSE_RUNS, time.monotonic()))

    def bavit_ms(self) -> Optional[float]:
        """Median of the recent warm BAViT runs; ``None`` before :data:`MIN_BAVIT_RUNS` of them."""
        with self._cond:
            return _median(_pool(self._bavit, MIN_BAVIT_RUNS, time.monotonic()))

    def _near(self, kept: int) -> list[float]:  # with self._cond held: see _pool
        near = [(t, ms) for t, count, ms in self._pruned if abs(count - kept) <= KEPT_TOLERANCE]
        return _pool(near, MIN_PRUNED_RUNS, time.monotonic())

    def curve(self) -> list[tuple[int, float]]:
        """The start-up calibration: ``[(kept patches, median ms)]`` of the pruned detector; empty until done."""
        with self._cond:
            if not self._curve_ready:
                return []
            return [(count, _median(samples)) for count, samples in sorted(self._curve.items()) if samples]

    def pruned(self, kept: int) -> tuple[Optional[float], str, int]:
        """``(ms, source, runs)`` of the pruned detector at ``kept`` patches: the median of the recent warm runs
        within :data:`KEPT_TOLERANCE` patches (source ``"warm runs"``), else the start-up curve interpolated
        (``"start-up curve"``, runs 0), else ``(None, "", 0)``."""
        with self._cond:
            near = self._near(kept)
        if len(near) >= MIN_PRUNED_RUNS:
            return _median(near), "warm runs", len(near)
        ms = interpolate(self.curve(), kept)
        return (ms, "start-up curve", 0) if ms is not None else (None, "", 0)

    def pruned_ms(self, kept: int) -> Optional[float]:
        """The pruned detector's ms at ``kept`` patches (see :meth:`pruned`)."""
        return self.pruned(kept)[0]

    def speedup(self, kept: int, cca_ms: Optional[float] = None) -> Optional[float]:
        """dense / (BAViT + CCA + pruned at ``kept``); ``None`` while any median is not known yet."""
        return self.estimate(kept, cca_ms).speedup

    def estimate(self, kept: int, cca_ms: Optional[float] = None) -> LatencyEstimate:
        """Everything the latency panel shows for ``kept`` patches; ``cca_ms`` (ms) replaces the median of the
        recent keep-mask rule runs (:meth:`add_cca`)."""
        dense, bavit = self.dense_ms(), self.bavit_ms()
        pruned, source, pruned_runs = self.pruned(kept)
        with self._cond:
            now = time.monotonic()
            dense_runs = len(_pool(self._dense, MIN_DENSE_RUNS, now)) or len(self._dense)
            bavit_runs = len(_pool(self._bavit, MIN_BAVIT_RUNS, now)) or len(self._bavit)
            cca_runs = 1 if cca_ms is not None else len(self._cca)
            if cca_ms is None:
                cca_ms = _median(self._cca) or 0.0
        speedup = None
        if dense is not None and bavit is not None and pruned is not None:
            speedup = dense / (bavit + float(cca_ms) + pruned)
        return LatencyEstimate(kept=int(kept), dense_ms=dense, bavit_ms=bavit, cca_ms=float(cca_ms), pruned_ms=pruned,
                               pruned_source=source, dense_runs=dense_runs, bavit_runs=bavit_runs,
                               pruned_runs=pruned_runs, speedup=speedup, warming_up=self.warming_up,
                               cca_runs=cca_runs)

    def samples(self) -> dict[str, list]:
        """Copies of the windows: ``dense``, ``bavit``, ``cca`` (ms, oldest first), ``pruned`` ([(kept, ms)]),
        ``curve`` ({kept: [ms]})."""
        with self._cond:
            return {"dense": [ms for _, ms in self._dense], "bavit": [ms for _, ms in self._bavit],
                    "cca": list(self._cca), "pruned": [(count, ms) for _, count, ms in self._pruned],
                    "curve": {count: list(ms) for count, ms in self._curve.items()}}

    # ------------------------------------------------------------------ warm-up
    @property
    def warming_up(self) -> bool:
        """True while the background warm-up runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> LatencyMonitor:
        """Start the background warm-up (a daemon thread; returns at once; a second call does nothing)."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._warm_up, name="bavit-latency-warm-up", daemon=True)
                self._thread.start()
        return self

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the warm-up to finish; True when it has (or never started)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def stop(self, timeout: Optional[float] = 10.0) -> bool:
        """Stop the warm-up (and any refresh) after its current run and wait for it; True when it has stopped."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            refresher = self._refresher
        if refresher is not None:
            refresher.join(timeout)
        return self.join(timeout)

    def _wait_for_quiet(self, settle: float = 0.0, timeout: float = 5.0) -> bool:
        """Let the app's requests run first: wait until none is being measured and the last one ended ``settle``
        seconds ago (at most ``timeout`` s); True when it is quiet."""
        deadline = time.monotonic() + timeout

        def quiet() -> bool:
            idle = not any(run.app for run in self._active)
            return idle and time.monotonic() - self._last_app_end >= settle

        with self._cond:
            while not self._stop.is_set() and not quiet():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait = settle - (time.monotonic() - self._last_app_end)
                self._cond.wait(min(left, wait) if wait > 0 else left)
            return quiet()

    def _maybe_refresh(self) -> None:
        """After an app run: once the warm-up is done and the newest dense run (BAViT's without a detector) is
        :data:`REFRESH_S` old, re-time dense and BAViT in a short background thread (one refresh at a time, at most
        one every :data:`REFRESH_S`)."""
        with self._cond:
            warmed = self._thread is not None and not self._thread.is_alive() and self._inputs is not None
            busy = self._refresher is not None and self._refresher.is_alive()
            now = time.monotonic()
            newest = (self._dense or self._bavit or [(float("-inf"), 0.0)])[-1][0]
            if (not warmed or busy or self._stop.is_set() or now - newest < REFRESH_S
                    or now - self._last_refresh < REFRESH_S):
                return
            self._last_refresh = now
            self._refresher = threading.Thread(target=self._refresh, name="bavit-latency-refresh", daemon=True)
            self._refresher.start()

    def _refresh(self) -> None:
        image, pixels = self._inputs
        try:
            if not self._wait_for_quiet(settle=SETTLE_S) or self._stop.is_set():
                return
            if pixels is not None:
                ms, overlapped = self._timed(self.predictor.run_detector, pixels)
                self.add_dense(ms, overlapped)
            if not self._stop.is_set():
                ms, overlapped = self._timed(self.predictor.run_bavit, image)
                self.add_bavit(ms, overlapped)
        except Exception as exc:  # a refresh never takes the app down; the medians keep their older runs
            self.error = f"refresh: {exc.__class__.__name__}: {exc}"

    def _timed(self, function, *args) -> tuple[float, bool]:
        """``(ms, overlapped)`` of one background call, made once the app has been quiet for :data:`SETTLE_S`
        (its requests' drawing and encoding are not measured runs, but they share the CPU)."""
        while not self._wait_for_quiet(settle=SETTLE_S) and not self._stop.is_set():
            pass
        with self.measuring(app=False) as run:
            start = time.perf_counter()
            function(*args)
            ms = (time.perf_counter() - start) * 1000.0
        return ms, run.overlapped

    def _warm_up(self) -> None:
        try:
            self._run_warm_up()
        except Exception as exc:  # the app must stay up: the page then keeps saying "warming up" and why
            self.error = f"{exc.__class__.__name__}: {exc}"

    def _run_warm_up(self) -> None:
        predictor = self.predictor
        image = self.image
        if image is None:
            rng = np.random.default_rng(0)
            image = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
        detect = bool(predictor.detector_requested)
        pixels = predictor.yolos_pixels(image) if detect else None
        grid = predictor.yolos_grid
        order = torch.randperm(grid * grid, generator=torch.Generator().manual_seed(0))

        def mask(kept: int) -> torch.Tensor:
            keep = torch.zeros(grid * grid, dtype=torch.bool)
            keep[order[:kept]] = True
            return keep.view(1, grid, grid)

        masks = {count: mask(min(count, grid * grid)) for count in self.curve_counts}
        middle = masks[self.curve_counts[len(self.curve_counts) // 2]] if masks else mask(grid * grid // 2)
        stop = self._stop.is_set
        # Untimed cold runs (building the backend's runners first: the onnxruntime export).
        predictor.warm_up(detect=detect)
        for _ in range(self.untimed_runs):
            if stop():
                return
            self._wait_for_quiet()
            predictor.run_bavit(image)
            if detect:
                predictor.run_detector(pixels)
                predictor.run_detector(pixels, middle)
        self.mark_warm("bavit", *(("dense", "pruned") if detect else ()))
        # Timed dense and BAViT runs, interleaved; an overlapped run is retried (at most twice as many tries).
        dense_left, bavit_left = (self.dense_runs if detect else 0), self.bavit_runs
        tries = 2 * (dense_left + bavit_left)
        while (dense_left or bavit_left) and tries and not stop():
            tries -= 1
            if bavit_left:
                ms, overlapped = self._timed(predictor.run_bavit, image)
                self.add_bavit(ms, overlapped)
                bavit_left -= not overlapped
            if dense_left and not stop():
                ms, overlapped = self._timed(predictor.run_detector, pixels)
                self.add_dense(ms, overlapped)
                dense_left -= not overlapped
        if not detect:
            with self._cond:
                self._inputs = (image, None)
            return
        # The start-up curve: curve_runs rounds over the kept counts (interleaved, so drift hits every count alike).
        for _ in range(self.curve_runs):
            for count, keep in masks.items():
                for _attempt in range(3):
                    if stop():
                        return
                    ms, overlapped = self._timed(predictor.run_detector, pixels, keep)
                    self.add_pruned(count, ms, overlapped)
                    if not overlapped:
                        with self._cond:
                            self._curve.setdefault(count, []).append(ms)
                        break
        with self._cond:
            self._curve_ready = True
            self._inputs = (image, pixels)
