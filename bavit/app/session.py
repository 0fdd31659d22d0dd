"""One browser session's state and controls (no Gradio here).

- :class:`ImageSession` — everything a session knows about its current image, held in ``gr.State``, and the
  changes events make to it (:meth:`~ImageSession.record`, :meth:`~ImageSession.retire`, a painted GT).
- :class:`Controls` — the control panel's values, parsed once into the Predictor's settings;
  :func:`effective_threshold` gives the curve's x.
- :class:`ViewRecord` — what one render measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..core.labels import labels_from_mask
from ..data.coco import CocoImage
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
from .gate import SessionGate
from .gt import painted_mask

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
    curve: Any  # curve.CurvePlot drawn for this CCA setting (cached in ``session.plots`` if it was new)
    point: tuple[float, float] | None  # (threshold, measured speed-up), or None without a measurement


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
    gate: SessionGate = field(default_factory=SessionGate, repr=False, compare=False)

    def record(self, record: ViewRecord) -> None:
        """Keep what a render measured: the curve for its CCA setting and its speed-up point (the last
        :data:`MEASURED_POINTS` per setting)."""
        with self.gate.hold():
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
