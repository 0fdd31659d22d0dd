"""The slider's positions answered ahead ("the ladder"), so that the page answers a slider move itself (no Gradio here).

- :func:`grid_ladder`: for one image, sparsity control and CCA setting, the Predictor's keep-mask rule at every
  position of the slider. The page receives it (:func:`bavit.app.page.ladder_message`, with the sparsity text and
  token table of each position) and shows Python's own answers when the slider moves. Positions with the same grid
  after CCA share one keep mask (:attr:`Rung.mask`).
- :class:`DetectionLadder`: the pruned detector at each keep mask of a grid ladder, computed in the background,
  the masks of the coarse positions (steps of 0.05 or 5 points) first, each group nearest to the slider's position
  first, each keep mask once. One per session: a new image, sparsity control, CCA
  setting or detector choice cancels it. The page receives its rungs through its timer and answers a move to a
  computed position with no round trip.
- :class:`LadderWorker`: the one background thread that runs every session's detection ladder, one rung at a time,
  only once no request is being answered (:meth:`~bavit.app.latency.LatencyMonitor.wait_quiet`), so requests, this
  session's and every other's, come first.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BAViTError
from ..predictor import Predictor
from ..pruning.settings import MAX_SPARSITY
from . import page
from .session import MODE_THRESHOLD, Controls, ImageSession, effective_threshold

log = logging.getLogger(__name__)

THRESHOLD_STEP = 0.01  # the threshold slider's step
TARGET_STEP = 1  # the target-sparsity slider's step (percent)
THRESHOLD_VALUES = tuple(round(i * THRESHOLD_STEP, 2) for i in range(int(round(1 / THRESHOLD_STEP)) + 1))
TARGET_VALUES = tuple(float(v) for v in range(0, int(round(100 * MAX_SPARSITY)) + 1, TARGET_STEP))
# Every COARSE_STEPS-th position (thresholds 0, 0.05, ...; targets 0, 5, ... %): the detection ladder computes the
# keep masks of these first, so that the whole slider in coarse steps is live soonest.
COARSE_STEPS = 5


def slider_values(mode: str) -> tuple[float, ...]:
    """The positions of the slider that drives ``mode``: the threshold's, or the target sparsity's (percent)."""
    return THRESHOLD_VALUES if mode == MODE_THRESHOLD else TARGET_VALUES


def at_value(controls: Controls, value: float, **changes: Any) -> Controls:
    """``controls`` with the slider of its mode at ``value`` (and ``changes``)."""
    slider = "threshold" if controls.mode == MODE_THRESHOLD else "target_sparsity"
    return dataclasses.replace(controls, **{slider: value, **changes})  # parsed again, settings included


@dataclass(frozen=True)
class Rung:
    """One slider position: its controls, what the page shows there without the detector (the texts of
    :mod:`.page`, the curve's x) and the indices of its grids in :attr:`GridLadder.grids` (``mask``: the grid after
    CCA, which sets the detector's keep mask)."""

    index: int
    controls: Controls
    raw: int
    mask: int
    kept: int  # YOLOS patches kept
    sparsity: str  # the sparsity panel (markdown)
    tokens: str  # the token table (markdown)
    x: float  # the curve's x: effective_threshold
    percent: float  # this image's sparsity, percent (the curve's y)


@dataclass(frozen=True)
class GridLadder:
    """The keep-mask rule at every position of one slider, for one image, sparsity control and CCA setting."""

    key: str  # the image's content hash
    mode: str
    cca_steps: int
    values: tuple[float, ...]
    rungs: tuple[Rung | None, ...]  # None where the Predictor refuses the setting (outside the calibration)
    grids: tuple[np.ndarray, ...]  # the distinct [G, G] bool grids (before and after CCA)

    def index(self, controls: Controls) -> int | None:
        """The position of ``controls``' slider value, or ``None`` when it is not one of :attr:`values`."""
        value = controls.slider_value
        index = int(np.argmin(np.abs(np.asarray(self.values) - value)))
        return index if abs(self.values[index] - value) < 1e-9 else None


def grid_ladder(predictor: Predictor, session: ImageSession, controls: Controls) -> GridLadder:
    """The Predictor's keep mask and the page's texts at every position of the slider that drives ``controls.mode``
    (the other controls as given; no detector)."""
    values = slider_values(controls.mode)
    grids: list[np.ndarray] = []
    seen: dict[bytes, int] = {}

    def intern(grid: np.ndarray) -> int:
        packed = np.packbits(grid).tobytes()
        if packed not in seen:
            seen[packed] = len(grids)
            grids.append(grid)
        return seen[packed]

    rungs = []
    for index, value in enumerate(values):
        try:
            rung_controls = at_value(controls, value)
            analysis = predictor.predict(session.prepared, rung_controls.settings, detect=False)
        except BAViTError:
            rungs.append(None)
            continue
        rungs.append(Rung(index, rung_controls, intern(analysis.grid_raw), intern(analysis.grid_cca),
                          int(analysis.accounting.kept_patches),
                          page.sparsity_text(analysis, rung_controls, predictor.calibration),
                          page.tokens_table(analysis), effective_threshold(analysis),
                          100.0 * float(analysis.accounting.sparsity)))
    return GridLadder(session.prepared.key, controls.mode, controls.cca_steps, values, tuple(rungs), tuple(grids))


_JOB_IDS = itertools.count(1)


@dataclass(eq=False)
class DetectionLadder:
    """The pruned detector at each keep mask of ``ladder``, for one session at the detector choices of
    ``controls`` (``detect``, ``show_dense``). Thread-safe: the worker and the events add results, events move
    :attr:`center`, and the page's timer sends the page the results it says it lacks (:meth:`missing`)."""

    session: ImageSession
    ladder: GridLadder
    controls: Controls
    id: int = field(default_factory=lambda: next(_JOB_IDS))
    center: int = 0  # the slider's position last seen: the next rung is the keep mask nearest to it
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # mask -> what the page shows there
    cancelled: threading.Event = field(default_factory=threading.Event)
    _running: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def key(self) -> tuple:
        """What the ladder's answers depend on: the image, the sparsity control, the CCA steps, the detector's
        choices."""
        return (self.ladder.key, self.ladder.mode, self.ladder.cca_steps, self.controls.detect,
                self.controls.show_dense)

    def matches(self, session: ImageSession, controls: Controls) -> bool:
        return session is self.session and self.key == (session.prepared.key, controls.mode, controls.cca_steps,
                                                        controls.detect, controls.show_dense)

    def _order(self, rung: Rung) -> tuple[bool, int]:
        return rung.index % COARSE_STEPS != 0, abs(rung.index - self.center)

    def next_rung(self) -> Rung | None:
        """The rung to compute next (marked running): of the keep masks not computed yet, one at a coarse position
        (:data:`COARSE_STEPS`) while there are such, and of those the one with a position nearest to :attr:`center`;
        ``None`` when all are computed or the ladder is cancelled."""
        with self._lock:
            if self.cancelled.is_set():
                return None
            best = min((rung for rung in self.ladder.rungs if rung is not None and rung.mask not in self.results),
                       key=self._order, default=None)
            self._running = None if best is None else best.mask
            return best

    def add(self, mask: int, result: dict[str, Any]) -> None:
        """What the page shows at the positions of keep mask ``mask`` (the first result for it stays)."""
        with self._lock:
            self.results.setdefault(mask, result)
            if self._running == mask:
                self._running = None

    def missing(self, have: Iterable[int], limit: int) -> dict[int, dict[str, Any]]:
        """Up to ``limit`` results whose keep mask is not in ``have`` (what the page says it holds), nearest to
        :attr:`center` first."""
        have = set(have)
        with self._lock:
            masks = [mask for mask in self.results if mask not in have]
            where = {}
            for rung in self.ladder.rungs:
                if rung is not None and rung.mask in self.results:
                    where[rung.mask] = min(where.get(rung.mask, 10**9), abs(rung.index - self.center))
            masks.sort(key=lambda mask: where.get(mask, 10**9))
            return {mask: self.results[mask] for mask in masks[:limit]}

    @property
    def masks(self) -> int:
        """The ladder's distinct keep masks: its rungs to compute."""
        return len({rung.mask for rung in self.ladder.rungs if rung is not None})

    @property
    def complete(self) -> bool:
        """Every keep mask is computed, or the ladder was cancelled."""
        with self._lock:
            return self.cancelled.is_set() or len(self.results) >= self.masks


class LadderWorker:
    """The background thread that computes the rungs of every session's :class:`DetectionLadder`, one at a time,
    taking the ladders in turn, each rung only once ``wait_quiet()`` returns True (no request is being answered).

    Args:
        compute: ``compute(ladder, rung) -> result`` (the page's answer at the rung: :meth:`Explorer.rung`).
        wait_quiet: blocks until the CPU is the background's; False once the app stops.
    """

    def __init__(self, compute: Callable[[DetectionLadder, Rung], dict[str, Any]],
                 wait_quiet: Callable[[], bool]) -> None:
        self.compute = compute
        self.wait_quiet = wait_quiet
        self._cond = threading.Condition(threading.Lock())
        self._ladders: dict[int, DetectionLadder] = {}  # id(session) -> its ladder
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.rungs_run = 0

    def submit(self, ladder: DetectionLadder) -> None:
        """Run ``ladder`` for its session, cancelling the session's previous one."""
        with self._cond:
            previous = self._ladders.get(id(ladder.session))
            if previous is not None and previous is not ladder:
                previous.cancelled.set()
            self._ladders[id(ladder.session)] = ladder
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bavit-ladder", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def cancel(self, session: ImageSession) -> None:
        """Stop the session's ladder (its image was replaced or removed)."""
        with self._cond:
            ladder = self._ladders.pop(id(session), None)
        if ladder is not None:
            ladder.cancelled.set()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            for ladder in self._ladders.values():
                ladder.cancelled.set()
            self._cond.notify_all()

    def _pick(self, wait: bool) -> tuple[DetectionLadder, Rung] | None:
        """The next rung, taking the sessions' ladders in turn (``None`` when there is none); with ``wait``, wait
        until there is one and leave it unpicked (``None``)."""
        with self._cond:
            while not self._stopped:
                for key, ladder in list(self._ladders.items()):
                    if ladder.cancelled.is_set() or len(ladder.results) >= ladder.masks:
                        del self._ladders[key]  # done: dropped
                if self._ladders and wait:
                    return None
                for key in list(self._ladders):
                    ladder = self._ladders.pop(key)
                    self._ladders[key] = ladder  # to the back of the turn order
                    rung = ladder.next_rung()
                    if rung is not None:
                        return ladder, rung
                if not wait:
                    return None
                self._cond.wait()
            return None

    def _run(self) -> None:
        while not self._stopped:
            self._pick(wait=True)  # until a ladder has work
            if self._stopped or not self.wait_quiet():  # then until no request is being answered
                return
            picked = self._pick(wait=False)
            if picked is None:
                continue
            ladder, rung = picked
            try:
                result = self.compute(ladder, rung)
            except Exception:  # the app stays up; the page asks the server at this position
                log.exception("a ladder rung failed")
                result = {"failed": True}
            ladder.add(rung.mask, result)
            self.rungs_run += 1


__all__ = ["DetectionLadder", "GridLadder", "LadderWorker", "Rung", "THRESHOLD_STEP", "TARGET_STEP", "at_value",
           "grid_ladder", "slider_values"]
