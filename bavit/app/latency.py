"""The app's latency rules: rolling windows of timings on this machine and the medians of warm runs the page shows,
never a single cold timing (no Gradio, no threads of its own: :mod:`bavit.app.timing` times the models in the
background and feeds the same windows).

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
"""
from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

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

    Subclassed by :class:`bavit.app.timing.LatencyMonitor`, which times the models in the background too; this
    class alone only takes what it is fed.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._samples: dict[str, deque[tuple[float, int, float]]] = {  # (time.monotonic(), kept, ms), oldest first
            series: deque(maxlen=400) for series in SERIES}
        self._cca: deque[float] = deque(maxlen=WINDOW)  # keep-mask rule (no model: never cold, never overlapped)
        self._curve: dict[int, list[float]] = {}  # start-up curve samples per kept count
        self._curve_ready = False
        self._cold = set(SERIES)  # series whose next sample is a cold first run (dropped)
        self._active: set[_Run] = set()
        self._last_app_end = float("-inf")  # time.monotonic() when the app's last measured run ended

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
                    self._last_app_end = time.monotonic()
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
                self._samples[series].append((time.monotonic(), int(kept), float(ms)))

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
            now = time.monotonic()
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
