"""One browser session's state and the order its events run in (no Gradio here).

- :class:`ImageSession` — everything a session knows about its current image, held in ``gr.State``.
- :class:`SessionGate` — a FIFO, re-entrant lock with numbered tickets: one session's events run one at a time in
  arrival order, and a control event superseded by a newer one skips its work (the last event wins).
- :class:`Controls` — the control panel's values; :class:`ViewRecord` — what one render measured.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..pruning.settings import cca_steps_value, flag_value, percent_value, threshold_value
from ..predictor import PreparedImage
from .gt import CocoImage

# The three ways to set the sparsity (the mode Radio's choices; Explorer.selection turns each into Predictor settings).
MODE_THRESHOLD = "FG-probability threshold"  # one threshold for every image (the slider's)
MODE_SPARSITY = "Mean sparsity (calibrated)"  # paper Table 2: the threshold giving this mean over images
MODE_TOPK = "This image's sparsity (top-k)"  # top-k BAViT tokens, k chosen so this image hits the target
MODES = (MODE_THRESHOLD, MODE_SPARSITY, MODE_TOPK)
TARGET_MODES = (MODE_SPARSITY, MODE_TOPK)  # modes set by the target-sparsity slider
MEASURED_POINTS = 200  # speed-up points kept per CCA setting for the curve


class SessionGate:
    """The order in which one session's events run: a FIFO, re-entrant lock with numbered tickets.

    :meth:`hold` takes the next ticket and waits until every earlier ticket's holder is done, so events run one at a
    time in the order they arrived (a plain ``threading.Lock`` wakes waiters in any order). A ticket can supersede
    *topics*, the outputs its event will set (``"view"``: the page's panels, ``"mode"``: the sliders' visibility);
    :meth:`superseded` tells a holder that a newer event will set a topic too, so its own value would be stale and
    need not be sent. Re-entrant: a nested ``hold`` in the holding thread runs at once under the outer ticket.

    Deep copies and pickles get a fresh gate (a lock cannot be copied, and a copy shares no state to guard), so an
    :class:`ImageSession` can live in ``gr.State``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._issued = 0  # tickets handed out
        self._serving = 0  # the ticket whose turn it is
        self._newest: dict[str, int] = {}  # topic -> newest ticket that supersedes it
        self._abandoned: set[int] = set()  # tickets whose wait was interrupted (skipped when their turn comes)
        self._owner: int | None = None  # thread id of the holder
        self._owner_ticket = -1

    def __deepcopy__(self, memo: dict) -> SessionGate:
        return SessionGate()

    def __reduce__(self):
        return SessionGate, ()

    def __repr__(self) -> str:
        with self._cond:
            return f"SessionGate(issued={self._issued}, serving={self._serving}, newest={self._newest})"

    @property
    def issued(self) -> int:
        """Tickets handed out so far."""
        with self._cond:
            return self._issued

    def superseded(self, ticket: int, topic: str = "view") -> bool:
        """True when a ticket taken after ``ticket`` supersedes ``topic``."""
        with self._cond:
            return self._newest.get(topic, -1) > ticket

    def _advance(self) -> None:  # with self._cond held
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    @contextmanager
    def hold(self, supersede: Iterable[str] = ()) -> Iterator[int]:
        """Take a ticket, wait for its turn and hold the session until the block ends; yields the ticket.

        Args:
            supersede: topics this event sets (control events: ``("view",)``); older holders then see them
                :meth:`superseded`. Events that only change the session (measuring, painting GT) supersede nothing.
        """
        topics = (supersede,) if isinstance(supersede, str) else tuple(supersede)  # before a ticket is issued
        if self._owner == threading.get_ident():  # only this thread can have set it to its own id
            yield self._owner_ticket
            return
        with self._cond:
            ticket = self._issued
            self._issued += 1
            for topic in topics:
                self._newest[topic] = ticket
            try:
                self._cond.wait_for(lambda: self._serving == ticket)
            except BaseException:  # interrupted while waiting: never block the tickets behind this one
                if self._serving == ticket:
                    self._advance()
                else:
                    self._abandoned.add(ticket)
                raise
            self._owner, self._owner_ticket = threading.get_ident(), ticket
        try:
            yield ticket
        finally:
            with self._cond:
                self._owner, self._owner_ticket = None, -1
                self._advance()


@dataclass(frozen=True)
class ViewRecord:
    """What one :meth:`Explorer.render` measured, for :meth:`Explorer.record` to keep in the session."""

    cca_steps: int
    curve: Any  # viz.CurvePlot drawn for this CCA setting (cached in ``session.plots`` if it was new)
    point: tuple[float, float] | None  # (threshold, measured speed-up), or None without a measurement


@dataclass
class ImageSession:
    """Everything one browser session knows about its current image.

    Read and change it only while holding ``gate`` (the :class:`Explorer` methods do); :meth:`Explorer.render`
    only reads it.
    """

    name: str
    prepared: PreparedImage  # the Predictor's set_image result: RGB image (longer side <= ANALYSIS_SIDE), fg_prob
    display: Image.Image  # RGB, longer side <= DISPLAY_SIDE (what overlays are drawn on)
    bavit_ms: float  # this image's set_image BAViT run (ms; 0 when cached); the page shows the monitor's medians
    source_size: tuple[int, int] = (0, 0)  # (width, height) px as uploaded, before any downscaling
    dense_ms: float | None = None  # this image's one dense YOLOS run (ms; for its detections), None before it
    dense_detections: list | None = None
    gt: np.ndarray | None = None  # [24, 24] int GT grid
    gt_source: str = ""
    coco: CocoImage | None = None
    plots: dict = field(default_factory=dict)  # cca_steps -> viz.CurvePlot
    measured: dict = field(default_factory=dict)  # cca_steps -> tuple[(threshold, speed-up), ...] (replaced, never changed)
    gate: SessionGate = field(default_factory=SessionGate, repr=False, compare=False)


@dataclass
class Controls:
    """The control panel's values. ``target_sparsity`` (percent of the YOLOS patches pruned) drives both
    :data:`TARGET_MODES`; ``threshold`` drives :data:`MODE_THRESHOLD` (see :meth:`Explorer.selection`)."""

    mode: str = MODE_THRESHOLD
    threshold: float = 0.5
    target_sparsity: float = 35.0  # percent
    cca_steps: int = 3
    detect: bool = True
    show_dense: bool = False

    def __post_init__(self) -> None:  # one validation for every event (bavit.pruning.settings)
        self.threshold = threshold_value(self.threshold)
        self.target_sparsity = percent_value("target sparsity", self.target_sparsity)
        self.cca_steps = cca_steps_value(self.cca_steps)
        self.detect = flag_value("detect", self.detect)
        self.show_dense = flag_value("show_dense", self.show_dense)
        if not isinstance(self.mode, str):
            raise ConfigError(f"the sparsity control must be one of {', '.join(MODES)}, got {self.mode!r}")
