"""The app's latency: rolling windows of timings on this machine, the medians of warm runs the page shows (never a
single cold timing), and the background timing of the shared Predictor's models that feeds them (no Gradio here).

Rules (one home for them):

- the first sample of each series (dense, BAViT, pruned) is the cold run and is dropped, unless the warm-up has
  already run that model untimed;
- a sample whose run overlapped another measured run (:meth:`LatencyWindows.measuring` brackets every run: the
  background timing and the requests, or two requests, sharing the CPU) is dropped: it is the contention, not the
  model;
- dense is the median of at least :data:`MIN_DENSE_RUNS` warm runs, BAViT of at least :data:`MIN_BAVIT_RUNS`, pruned
  of at least :data:`MIN_PRUNED_RUNS` warm runs within :data:`KEPT_TOLERANCE` patches of the kept count, else the
  start-up curve (pruned ms against kept patches) interpolated; each median is over the newest :data:`WINDOW` runs
  of the last :data:`MAX_AGE_S` seconds when there are enough of them, else over the newest :data:`WINDOW` of any age;
- speed-up = dense / (BAViT + CCA + pruned), ``None`` while any of them is not known yet (the page says "warming up").

Background timing (:class:`LatencyMonitor`, daemon threads): page requests run neither dense YOLOS (except once per
image for "Show dense") nor BAViT (cached per image), so without it the page could never show a speed-up.
:meth:`LatencyMonitor.start` warms the models up (:data:`UNTIMED_RUNS` untimed cold runs; the onnxruntime export
takes seconds), then times :data:`DENSE_RUNS` dense and :data:`BAVIT_RUNS` BAViT runs, interleaved, then the pruned
detector :data:`CURVE_RUNS` times at each of :data:`CURVE_COUNTS` kept patches (the start-up curve). The page is
served meanwhile and says "warming up". While the app is used, dense and BAViT are re-timed (one run each, at most
every :data:`REFRESH_S` seconds), so the dense and the pruned medians come from the same seconds of this machine's
load. Every background run waits until no request has run for :data:`SETTLE_S` seconds, so the page answers first.
Without detector weights the detector is timed on the YOLOS-tiny architecture at random init (:func:`time_pruned`).
"""
from __future__ import annotations

import dataclasses
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..deploy.export import ExportProcess
from ..predictor import Analysis, Predictor

MIN_DENSE_RUNS = 5  # warm dense runs before the dense median is used
MIN_BAVIT_RUNS = 3
MIN_PRUNED_RUNS = 3  # warm pruned runs near a kept count before their median replaces the start-up curve
KEPT_TOLERANCE = 8  # patches (of 1024): pruned runs this close to a kept count count as "at this kept count"
WINDOW = 15  # the most recent warm samples a median is taken over
MAX_AGE_S = 20.0  # s: medians prefer runs this recent (when there are enough of them): the load of these seconds
SERIES = ("dense", "bavit", "pruned")


def _median(samples: Iterable[float]) -> float | None:
    samples = list(samples)
    return float(statistics.median(samples)) if samples else None


def _pool(samples: Iterable[tuple[float, float]], minimum: int, now: float) -> list[float]:
    """The ms a median is taken over: of ``samples`` ([(time, ms)], oldest first) the newest :data:`WINDOW` of the
    last :data:`MAX_AGE_S` seconds when there are ``minimum`` of them, else the newest :data:`WINDOW` of any age;
    empty with fewer than ``minimum`` in all."""
    samples = list(samples)
    recent = [ms for t, ms in samples if now - t <= MAX_AGE_S]
    pool = recent if len(recent) >= minimum else [ms for _, ms in samples]
    return pool[-WINDOW:] if len(pool) >= minimum else []


def interpolate(curve: list[tuple[int, float]], kept: float) -> float | None:
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
    dense_ms: float | None
    bavit_ms: float | None
    cca_ms: float  # the keep-mask rule: median of the recent requests' runs (0 before any)
    pruned_ms: float | None
    pruned_source: str  # "warm runs" (at about this kept count), "start-up curve", or "" (not known yet)
    dense_runs: int  # warm samples behind each median (dense, BAViT: so far, while too few)
    bavit_runs: int
    pruned_runs: int
    speedup: float | None  # dense / (BAViT + CCA + pruned); None while warming up
    warming_up: bool  # the background warm-up is still running
    cca_runs: int

    @property
    def pipeline_ms(self) -> float | None:
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

    __slots__ = ("app", "overlapped")

    def __init__(self, app: bool):
        self.overlapped = False
        self.app = app


class LatencyWindows:
    """Thread-safe rolling windows of warm latency samples, and the medians the page shows.

    Subclassed by :class:`bavit.app.latency.LatencyMonitor`, which times the models in the background too; this
    class alone only takes what it is fed.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # seconds, for the samples' ages and the background's pauses (tests give a fake one)
        self._cond = threading.Condition(threading.Lock())
        self._samples: dict[str, deque[tuple[float, int, float]]] = {  # (clock(), kept, ms), oldest first
            series: deque(maxlen=400) for series in SERIES}
        self._cca: deque[float] = deque(maxlen=WINDOW)  # keep-mask rule (no model: never cold, never overlapped)
        self._curve: dict[int, list[float]] = {}  # start-up curve samples per kept count
        self._curve_ready = False
        self._cold = set(SERIES)  # series whose next sample is a cold first run (dropped)
        self._active: set[_Run] = set()
        self._last_app_end = float("-inf")  # clock() when the app's last measured run ended

    @property
    def warming_up(self) -> bool:
        """True while a background warm-up runs (never here)."""
        return False

    @contextmanager
    def measuring(self, app: bool = True) -> Iterator[_Run]:
        """Bracket a run whose timing will be fed in; ``run.overlapped`` says whether another measured run shared
        the CPU meanwhile (feed it with ``overlapped=run.overlapped`` and it is dropped). ``app``: a request's run
        (background runs wait for those to end)."""
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
                    self._last_app_end = self.clock()
                self._cond.notify_all()
            if app:
                self._app_run_ended()

    def _app_run_ended(self) -> None:
        """Called after each app run (the background timing may re-time the models then)."""

    def add(self, series: str, ms: float, overlapped: bool = False, kept: int = 0) -> None:
        """One run of ``series``: ``"dense"``, ``"bavit"`` (resize, normalisation and forward) or ``"pruned"`` (on
        ``kept`` patches), in ms; dropped when it is the series' cold first run or ``overlapped``."""
        with self._cond:
            if series in self._cold:
                self._cold.discard(series)
            elif not overlapped:
                self._samples[series].append((self.clock(), int(kept), float(ms)))

    def add_cca(self, ms: float) -> None:
        """One run of the keep-mask rule (selection, CCA, resample; ms)."""
        with self._cond:
            self._cca.append(float(ms))

    def add_timings(self, timings_ms: dict[str, float], kept: int, overlapped: bool = False) -> None:
        """A request's timings (an Analysis' ``timings_ms``): ``cca_ms``, and ``pruned_ms`` (on ``kept`` patches)
        and ``dense_ms`` when those models ran."""
        self.add_cca(timings_ms["cca_ms"])
        if timings_ms.get("pruned_ms"):
            self.add("pruned", timings_ms["pruned_ms"], overlapped, kept)
        if timings_ms.get("dense_ms"):
            self.add("dense", timings_ms["dense_ms"], overlapped)

    def curve(self) -> list[tuple[int, float]]:
        """The start-up curve: ``[(kept patches, median ms)]`` of the pruned detector; empty until done."""
        with self._cond:
            if not self._curve_ready:
                return []
            return [(count, _median(samples)) for count, samples in sorted(self._curve.items()) if samples]

    def estimate(self, kept: int) -> LatencyEstimate:
        """Everything the latency panel shows for ``kept`` patches (the module's rules)."""
        curve = self.curve()
        with self._cond:
            now = self.clock()
            dense = _pool(((t, ms) for t, _, ms in self._samples["dense"]), MIN_DENSE_RUNS, now)
            bavit = _pool(((t, ms) for t, _, ms in self._samples["bavit"]), MIN_BAVIT_RUNS, now)
            dense_runs = len(dense) or len(self._samples["dense"])
            bavit_runs = len(bavit) or len(self._samples["bavit"])
            near = _pool(((t, ms) for t, count, ms in self._samples["pruned"] if abs(count - kept) <= KEPT_TOLERANCE),
                         MIN_PRUNED_RUNS, now)
            cca_ms, cca_runs = _median(self._cca) or 0.0, len(self._cca)
        dense_ms, bavit_ms = _median(dense), _median(bavit)
        pruned_ms = _median(near) if near else interpolate(curve, kept)
        source = "warm runs" if near else "" if pruned_ms is None else "start-up curve"
        speedup = None
        if dense_ms is not None and bavit_ms is not None and pruned_ms is not None:
            speedup = dense_ms / (bavit_ms + cca_ms + pruned_ms)
        return LatencyEstimate(kept=int(kept), dense_ms=dense_ms, bavit_ms=bavit_ms, cca_ms=cca_ms,
                               pruned_ms=pruned_ms, pruned_source=source, dense_runs=dense_runs,
                               bavit_runs=bavit_runs, pruned_runs=len(near), speedup=speedup,
                               warming_up=self.warming_up, cca_runs=cca_runs)

    def samples(self) -> dict[str, list]:
        """Copies of the windows: ``dense``, ``bavit``, ``cca`` (ms, oldest first), ``pruned`` ([(kept, ms)]),
        ``curve`` ({kept: [ms]})."""
        with self._cond:
            return {"dense": [ms for _, _, ms in self._samples["dense"]],
                    "bavit": [ms for _, _, ms in self._samples["bavit"]], "cca": list(self._cca),
                    "pruned": [(count, ms) for _, count, ms in self._samples["pruned"]],
                    "curve": {count: list(ms) for count, ms in self._curve.items()}}


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

    def __init__(self, predictor: Predictor, clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
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

    def building(self, kind: str) -> bool:
        """True while the warm-up is to build, or builds, the predictor's ``"bavit"`` or ``"detector"`` runner (its
        onnxruntime export): a request then answers without it rather than wait."""
        return self.warming_up and not self.predictor.built(kind)

    def start(self, exporter: ExportProcess | None = None) -> LatencyMonitor:
        """Start the warm-up in a daemon thread (returns at once; a second call does nothing). With ``exporter``,
        the warm-up's onnxruntime exports run in that child process (their seconds of pure-Python tracing would
        hold the GIL the server's threads need); it is closed when the exports end."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._background, args=(self._warm_up, exporter),
                                                name="bavit-latency-warm-up", daemon=True)
                self._thread.start()
                return self
        if exporter is not None:
            exporter.close()
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

    def _background(self, work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        except Exception as exc:  # the app must stay up: the page then says why there is no speed-up
            self.error = f"{exc.__class__.__name__}: {exc}"

    def wait_quiet(self) -> bool:
        """Wait until no app run is measured and the last one ended :data:`SETTLE_S` ago (its drawing and encoding
        share the CPU too): the background's turn. False once stopped."""
        with self._cond:
            while not self._stop.is_set():
                busy = any(run.app for run in self._active)
                wait = SETTLE_S - (self.clock() - self._last_app_end)
                if not busy and wait <= 0:
                    return True
                self._cond.wait(None if busy else wait)
            return False

    def _timed(self, function: Callable[..., Any], *args: Any) -> tuple[float, bool] | None:
        """``(ms, overlapped)`` of one background call, made once no app run is measured and the last one ended
        :data:`SETTLE_S` ago (its drawing and encoding share the CPU too); ``None`` once stopped."""
        if not self.wait_quiet():
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
            now = self.clock()
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

    def _warm_up(self, exporter: ExportProcess | None = None) -> None:
        predictor = self.predictor
        try:  # the export child is closed once the runners are built, also when anything before fails
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
            predictor.warm_up(detect=detect, exporter=exporter)  # builds the runners (the onnxruntime exports)
        finally:
            if exporter is not None:
                exporter.close()
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
