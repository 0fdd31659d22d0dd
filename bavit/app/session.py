"""One browser session: its image, its ground truth, its controls and the order its events run in (no Gradio here).

- :class:`ImageSession` — everything a session knows about its current image, held in ``gr.State``, and the
  changes events make to it (:meth:`~ImageSession.record`, :meth:`~ImageSession.retire`, a painted GT).
- :class:`Controls` — the control panel's values, parsed once into the Predictor's settings;
  :func:`effective_threshold` gives the curve's x. :class:`ViewRecord` — what one render measured.
- :class:`SessionGate` — the order of one session's events: a FIFO, re-entrant lock with numbered tickets; a control
  event superseded by a newer one skips its work, so the last event wins.
- Ground truth: :func:`painted_mask` (the user's painting) beside a dataset's
  (:class:`~bavit.data.coco.CocoGroundTruth`), as patch grids by the label rule of :mod:`bavit.core.labels` laid
  over the image the way BAViT sees it; :func:`grid_stats` compares a grid with them.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..core.labels import labels_from_mask
from ..data.coco import CocoImage
from ..engine.metrics import confusion_counts, rates
from ..errors import ConfigError
from ..predictor import Analysis, Predictor, PreparedImage
from ..pruning.settings import (
    DEFAULT_CCA_STEPS,
    DEFAULT_SPARSITY,
    DEFAULT_THRESHOLD,
    PruningSettings,
    flag_value,
    percent_value,
    threshold_value,
)


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

    def __reduce__(self) -> tuple[type[SessionGate], tuple[()]]:
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


def painted_mask(editor_value: Mapping[str, Any] | None) -> np.ndarray | None:
    """``[H, W]`` bool mask of what the user painted in a ``gr.ImageEditor(type="numpy")``, or ``None`` if nothing.

    A pixel is painted when any layer has alpha > 0 there. ``H, W`` is the editor's canvas (its background image).
    """
    if not editor_value:
        return None
    painted = None
    for layer in editor_value.get("layers") or []:
        if layer is None:
            continue
        layer = np.asarray(layer)
        alpha = layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[2] == 4 else np.any(layer > 0, axis=-1) if layer.ndim == 3 else layer > 0
        painted = alpha if painted is None else (painted | alpha if painted.shape == alpha.shape else painted)
    if painted is None or not painted.any():
        return None
    return painted


def grid_stats(gt: np.ndarray, pred: np.ndarray) -> dict[str, float | int | None]:
    """Confusion counts and rates of a predicted grid against a GT grid of one image.

    Args:
        gt: ``[gh, gw]`` int in {0, 1, IGNORE_INDEX} (or bool).
        pred: ``[gh, gw]`` bool.
    Returns:
        counts ``tp, fp, fn, tn`` and :func:`bavit.engine.metrics.rates` (fractions; ``None`` when undefined).
    """
    counts = confusion_counts(pred, gt)
    return {**counts, **rates(**counts)}


# The three ways to set the sparsity (the mode Radio's choices; Controls turns each into Predictor settings).
MODE_THRESHOLD = "FG-probability threshold"  # one threshold for every image (the slider's)
MODE_SPARSITY = "Mean sparsity (calibrated)"  # paper Table 2: the threshold giving this mean over images
MODE_TOPK = "This image's sparsity (top-k)"  # PruningSettings(image_sparsity=...): this image held at the target
MODES = (MODE_THRESHOLD, MODE_SPARSITY, MODE_TOPK)
TARGET_MODES = (MODE_SPARSITY, MODE_TOPK)  # modes set by the target-sparsity slider
MEASURED_POINTS = 200  # speed-up points kept per CCA setting for the curve


@dataclass(frozen=True)
class ViewRecord:
    """What one ``Explorer.render`` measured, for :meth:`ImageSession.record` to keep."""

    cca_steps: int
    curve: Any  # viz.CurvePlot drawn for this CCA setting (cached in ``session.plots`` if it was new)
    point: tuple[float, float] | None  # (threshold, measured speed-up), or None without a measurement
    waiting: Any = None  # (analysis, controls) whose latency panel said "warming up", else None


@dataclass
class ImageSession:
    """Everything one browser session knows about its current image.

    Read and change it only while holding ``gate`` (the :class:`~bavit.app.explorer.Explorer` methods do);
    ``Explorer.render`` only reads it.
    """

    name: str
    prepared: PreparedImage  # the Predictor's set_image result: RGB image (longer side <= ANALYSIS_SIDE), fg_prob
    display: Image.Image  # RGB, longer side <= DISPLAY_SIDE (what overlays are drawn on)
    bavit_ms: float  # this image's set_image BAViT run (ms; 0 when cached); the page shows the monitor's medians
    source_size: tuple[int, int] = (0, 0)  # (width, height) px as uploaded, before any downscaling
    dense_ms: float | None = None  # this image's one dense YOLOS run (ms; for its detections), None before it
    dense_detections: list | None = None
    gt: np.ndarray | None = None  # [G, G] int GT grid (BAViT's grid)
    gt_source: str = ""
    coco: CocoImage | None = None
    plots: dict = field(default_factory=dict)  # cca_steps -> curve.CurvePlot
    measured: dict = field(default_factory=dict)  # cca_steps -> tuple[(threshold, speed-up), ...] (replaced, never changed)
    waiting: Any = None  # the shown view's (analysis, controls) while its latency panel waits for medians, else None
    ladders: dict = field(default_factory=dict)  # (mode, cca_steps) -> ladder.GridLadder, the newest LADDERS kept
    sent: set = field(default_factory=set)  # the (mode, cca_steps) whose grid ladder the page has
    job: Any = None  # the session's ladder.DetectionLadder (the detector at every keep mask), or None
    gate: SessionGate = field(default_factory=SessionGate, repr=False, compare=False)

    def record(self, record: ViewRecord) -> None:
        """Keep what a render measured: the curve for its CCA setting, its speed-up point (the last
        :data:`MEASURED_POINTS` per setting) and whether its latency panel waits for medians."""
        with self.gate.hold():
            self.waiting = record.waiting
            self.plots.setdefault(record.cca_steps, record.curve)
            if record.point is not None:
                points = self.measured.get(record.cca_steps, ())
                self.measured[record.cca_steps] = (*points, record.point)[-MEASURED_POINTS:]

    def retire(self) -> None:
        """This session is being replaced (new image, or cleared): events on it still waiting skip their work, and
        one running now finishes before this returns (so its outputs reach the page before the new image's)."""
        with self.gate.hold(supersede=("view",)):  # not "mode": the sliders do not belong to the image
            pass

    def set_painted_gt(self, editor_value: Any) -> bool:
        """Use the user's painting (a ``gr.ImageEditor`` value) as this image's GT; False when nothing is painted."""
        mask = painted_mask(editor_value)
        if mask is None:
            return False
        gt = labels_from_mask(mask, grid=self.prepared.fg_prob.shape).numpy()
        with self.gate.hold():
            self.gt, self.gt_source = gt, "painted in the editor"
        return True


@dataclass
class Controls:
    """The control panel's values, parsed once into the Predictor's :attr:`settings`. ``target_sparsity`` (percent
    of the YOLOS patches pruned) drives both :data:`TARGET_MODES`; ``threshold`` drives :data:`MODE_THRESHOLD`.

    Raises:
        ConfigError: an unknown mode, or a value out of range (each value is parsed here, once).
    """

    mode: str = MODE_THRESHOLD
    threshold: float = DEFAULT_THRESHOLD
    target_sparsity: float = 100.0 * DEFAULT_SPARSITY  # percent
    cca_steps: int = DEFAULT_CCA_STEPS
    detect: bool = True
    show_dense: bool = False
    settings: PruningSettings = field(init=False)  # what the Predictor computes

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise ConfigError(f"unknown sparsity control {self.mode!r}; use one of "
                              + ", ".join(f'"{mode}"' for mode in MODES))
        self.target_sparsity = percent_value("target sparsity", self.target_sparsity)
        if self.mode == MODE_THRESHOLD:
            self.settings = PruningSettings(threshold=self.threshold, cca_steps=self.cca_steps)
            self.threshold = self.settings.threshold
        else:
            selection = "sparsity" if self.mode == MODE_SPARSITY else "image_sparsity"
            self.settings = PruningSettings(**{selection: self.target_sparsity / 100.0}, cca_steps=self.cca_steps)
            self.threshold = threshold_value(self.threshold)  # the hidden slider's value, kept for the page
        self.cca_steps = self.settings.cca_steps
        self.detect = flag_value("detect", self.detect)
        self.show_dense = flag_value("show_dense", self.show_dense)


    @property
    def slider_value(self) -> float:
        """The value of the slider that drives :attr:`mode`: the threshold, or the target sparsity (percent)."""
        return self.threshold if self.mode == MODE_THRESHOLD else self.target_sparsity


def modes(predictor: Predictor) -> list[str]:
    """The sparsity controls ``predictor``'s checkpoint offers: :data:`MODE_SPARSITY` only with a calibration."""
    return [mode for mode in MODES if mode != MODE_SPARSITY or predictor.calibration is not None]


def default_mode(predictor: Predictor) -> str:
    """The paper's setting (calibrated mean sparsity) when the checkpoint has a calibration, else the threshold."""
    return MODE_THRESHOLD if predictor.calibration is None else MODE_SPARSITY


def effective_threshold(analysis: Analysis) -> float:
    """The threshold on the curve's x axis: the one the analysis applied (the slider's or the calibrated one), or
    for a top-k setting the lowest FG probability it kept (the k-th highest)."""
    if analysis.threshold is not None:
        return float(analysis.threshold)
    return float(analysis.fg_prob[analysis.grid_raw].min())
