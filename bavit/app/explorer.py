"""The app's logic: one :class:`Explorer` wraps a shared :class:`~bavit.predictor.Predictor`; no Gradio here.

:mod:`bavit.app.ui` only lays out components and wires them to these methods, which return plain values (PIL
images, markdown strings, ``None`` for a hidden panel), so everything here is testable without a browser. Per-session data (the image, its cached BAViT
probabilities, dense-detector results, GT grid, plot) lives in a ``gr.State`` holding an :class:`ImageSession`, so
two browser sessions never share an image; the Predictor's own cache is keyed by image content. Moving a control
reruns only CCA and the pruned detector (BAViT's probabilities come from the session), and control events use
``trigger_mode="always_last"`` so a drag never queues stale work.

Sparsity control (:meth:`Explorer.selection`): a FG-probability threshold; a calibrated *mean* sparsity over images
(paper Table 2: one threshold from the checkpoint's calibration, each image's own sparsity follows its content;
offered only when the checkpoint carries a calibration); or this image's sparsity held at the target by top-k.

Thread safety. Gradio runs handlers in worker threads, so two events of one session (a slider and a checkbox moved
quickly) can run at the same time. Each :class:`ImageSession` has a :class:`SessionGate`: every event that reads or
changes the session takes a ticket on entry and then runs alone, in ticket order; a control event whose ticket was
superseded by a newer control event skips its work (:meth:`Explorer.update` returns ``None``), so the last event's
settings are what the page shows (outputs of one session's events also leave in arrival order). :meth:`Explorer.render` only reads the session: what it measured (a speed-up point,
a newly drawn curve) comes back in ``view["record"]`` and :meth:`Explorer.record` stores it, under the gate.

Latency. Timings shared by all sessions live in one :class:`~bavit.app.latency.LatencyMonitor` (``Explorer.monitor``,
its own lock): every model run of a request is bracketed by ``monitor.measuring()`` (so runs that shared the CPU
with another are dropped) and its detector timings are fed to it; the page shows its medians of warm runs and the
speed-up they give at this image's kept count, never a single timing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import BAViTError, ConfigError, DataError
from ..imageio import load_image
from ..pruning.settings import PruningSettings, flag_value, percent_value
from ..pruning.accounting import token_accounting
from ..pruning.keep_mask import keep_mask_from_probs, keep_ratio_for_count
from . import uploads, viz
from .gt import CocoGroundTruth, grid_stats, painted_mask  # noqa: F401 (CocoGroundTruth re-exported)
from .latency import MIN_DENSE_RUNS, LatencyEstimate, LatencyMonitor
from .session import (  # noqa: F401 (re-exported for ui and tests)
    MEASURED_POINTS,
    MODE_SPARSITY,
    MODE_THRESHOLD,
    MODE_TOPK,
    MODES,
    Controls,
    ImageSession,
    ViewRecord,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "assets" / "examples"
DISPLAY_SIDE = 512  # px: overlays are drawn at this size
ANALYSIS_SIDE = 1024  # px: the session keeps the image at most this large (BAViT sees 384, YOLOS 512)
TINY_SIDE = 32  # px: smaller images still run, with a warning
CURVE_THRESHOLDS = np.round(np.linspace(0.02, 0.98, 25), 4)

CSS = """
#banner {background: #fff3cd; border: 1px solid #e0b100; border-radius: 6px; padding: 4px 12px;}
#tokens table {font-variant-numeric: tabular-nums;}
"""


def _fmt(value: float | None, spec: str = ".1%") -> str:
    return "n/a" if value is None else format(value, spec)


class Explorer:
    """The app's logic around one shared Predictor.

    Args:
        predictor: a :class:`bavit.predictor.Predictor` (loaded once, shared by all sessions).
        coco: optional COCO-format dataset for GT grids of its images.
        monitor: the latency monitor (default: a new one around ``predictor``, not started: the entry point
            calls ``explorer.monitor.start()`` to warm the models up in the background).
    """

    def __init__(self, predictor, coco: CocoGroundTruth | None = None, monitor: LatencyMonitor | None = None,
                 image_roots: tuple[str | Path, ...] | None = None):
        self.predictor = predictor
        self.coco = coco
        self.monitor = monitor if monitor is not None else LatencyMonitor(predictor)
        self.image_roots = (EXAMPLES_DIR, *(coco.image_dirs() if coco else ())) if image_roots is None else image_roots

    # ------------------------------------------------------------------ loading
    def allow_images_from(self, folder: str | Path) -> None:
        """Add ``folder`` (the web framework's upload folder) to :attr:`image_roots`."""
        if Path(folder) not in {Path(root) for root in self.image_roots}:
            self.image_roots = (*self.image_roots, Path(folder))

    @staticmethod
    def tiny_warning(session: ImageSession) -> str | None:
        """A warning for an image whose shorter side is under :data:`TINY_SIDE` px (as uploaded, or as analysed
        after a very long side was fitted into :data:`ANALYSIS_SIDE`), else ``None``."""
        width, height = session.source_size
        analysed = session.prepared.image.size
        if min(width, height, *analysed) >= TINY_SIDE:
            return None
        fitted = "" if analysed == (width, height) else f", {analysed[0]}x{analysed[1]} px once fitted into {ANALYSIS_SIDE} px"
        return (f"This image is tiny ({width}x{height} px{fitted}): it is stretched to 384x384, so the grid says "
                "little.")

    def read_image(self, payload: Any, exif: bool = True) -> tuple[Image.Image, str]:
        """The payload's image, fitted into :data:`ANALYSIS_SIDE` (the one preprocessing of the page and the API),
        and the file name to show.

        The file must lie in :attr:`image_roots` (:func:`~bavit.app.uploads.confine`), have at most
        :data:`~bavit.app.uploads.MAX_IMAGE_PIXELS` pixels (checked before decoding) and is decoded in one of the
        app's :data:`~bavit.app.uploads.DECODE_SLOTS`. ``image.info["source_size"]`` is its size as stored.

        Raises:
            DataError: refused, not an image, corrupt or too large; the message names the upload's file name,
                never a server path.
        """
        path, name = uploads.payload_path(payload)
        resolved = uploads.confine(path, self.image_roots)
        try:
            with uploads.decode_slot():
                image = load_image(resolved, max_side=ANALYSIS_SIDE, exif=exif, max_pixels=uploads.MAX_IMAGE_PIXELS)
        except DataError as exc:
            message = str(exc).replace(str(resolved), repr(name))
            raise DataError(message if repr(name) in message else f"{name!r}: {message}") from None
        return image, name

    def open_image(self, payload: Any) -> ImageSession:
        """Decode the uploaded file (:meth:`read_image`), run BAViT (cached by content) and start a session."""
        image, name = self.read_image(payload)
        coco_entry = None
        if self.coco is not None and self.coco.lookup(name) is not None:
            raw, _ = self.read_image(payload, exif=False)  # COCO annotations refer to the stored pixel layout
            coco_entry = self.coco.match(name, raw)
            if coco_entry is not None:
                image = raw
        with self.monitor.measuring():  # BAViT (or its cache: bavit_ms 0)
            prepared = self.predictor.set_image(image)
        session = ImageSession(name=name, prepared=prepared, display=viz.fit_image(image, DISPLAY_SIDE),
                               bavit_ms=prepared.bavit_ms, source_size=tuple(image.info["source_size"]))
        if coco_entry is not None:
            session.coco = coco_entry
            session.gt = self.coco.labels(coco_entry, prepared.fg_prob.shape)
            session.gt_source = f"COCO {coco_entry.split} image {coco_entry.image_id} (instance masks)"
        return session

    def measure_dense(self, session: ImageSession, controls: Controls) -> None:
        """Dense YOLOS once per image, for its detections ("Show dense YOLOS too"); its timing (and the pruned run's)
        goes into :attr:`monitor`, the latency panel shows medians, not this run.

        Check and measurement happen under the session's gate, so two events never both run the dense model."""
        with session.gate.hold():
            if session.dense_ms is not None:
                return
            with self.monitor.measuring() as run:
                analysis = self.predictor.predict(session.prepared, **self.selection(session, controls),
                                                  cca_steps=int(controls.cca_steps), detect=True, dense=True)
            self._record(analysis, run.overlapped)
            session.dense_detections = analysis.dense_detections
            session.dense_ms = analysis.timings_ms.get("dense_ms")

    # ------------------------------------------------------------------ analysis
    @property
    def calibrated(self) -> bool:
        """True when the BAViT checkpoint carries a calibration (:data:`MODE_SPARSITY` is offered)."""
        return self.predictor.calibration is not None

    def modes(self) -> list[str]:
        """The sparsity controls this checkpoint offers: :data:`MODE_SPARSITY` only with a calibration."""
        return [mode for mode in MODES if mode != MODE_SPARSITY or self.calibrated]

    def default_mode(self) -> str:
        """The paper's setting (calibrated mean sparsity) when the checkpoint has a calibration, else the threshold."""
        return MODE_SPARSITY if self.calibrated else MODE_THRESHOLD

    def selection(self, session: ImageSession, controls: Controls) -> dict[str, float]:
        """The Predictor setting for ``controls``: exactly one of ``{"threshold": t}``, ``{"sparsity": s}``
        (calibrated mean sparsity, a fraction) or ``{"keep_ratio": r}``.

        In :data:`MODE_TOPK`, ``r`` is the BAViT keep ratio whose keep mask (top-k, CCA, resample) keeps the
        count of YOLOS patches closest to the target for this image, so this image's sparsity is the target as
        nearly as its grid allows.

        Raises:
            ConfigError: an unknown mode, a target outside [0, 100], or the calibrated mode without a calibration.
        """
        if controls.mode == MODE_THRESHOLD:
            return {"threshold": float(controls.threshold)}
        if controls.mode not in MODES:
            raise ConfigError(f"unknown sparsity control {controls.mode!r}; use one of "
                              + ", ".join(f'"{mode}"' for mode in self.modes()))
        target = percent_value("target sparsity", controls.target_sparsity)
        if controls.mode == MODE_SPARSITY:
            if not self.calibrated:
                raise ConfigError(f'"{MODE_SPARSITY}" needs a calibrated BAViT checkpoint and this one has no '
                                  "calibration (python -m bavit calibrate --checkpoint CKPT); use "
                                  f'"{MODE_TOPK}" or "{MODE_THRESHOLD}"')
            return {"sparsity": target / 100.0}
        grid = self.predictor.yolos_grid
        kept = round(grid * grid * (1.0 - target / 100.0))
        ratio = keep_ratio_for_count(torch.from_numpy(np.array(session.prepared.fg_prob)), kept, grid,
                                     int(controls.cca_steps), self.predictor.resample_mode)
        return {"keep_ratio": ratio}

    def analyze(self, session: ImageSession, controls: Controls):
        """CCA + (optionally) the pruned detector at the current controls, reusing the session's BAViT output.

        The detector's timing goes into :attr:`monitor`."""
        settings = dict(**self.selection(session, controls), cca_steps=int(controls.cca_steps),
                        detect=bool(controls.detect), dense=False)
        if not controls.detect:
            analysis = self.predictor.predict(session.prepared, **settings)
            self.monitor.add_cca(analysis.timings_ms["cca_ms"])
            return analysis
        with self.monitor.measuring() as run:
            analysis = self.predictor.predict(session.prepared, **settings)
        self._record(analysis, run.overlapped)
        return analysis

    def _record(self, analysis, overlapped: bool) -> None:
        """Feed an analysis' timings (``cca_ms``; ``pruned_ms`` at its kept count, ``dense_ms``) to :attr:`monitor`."""
        timings = analysis.timings_ms
        self.monitor.add_cca(timings["cca_ms"])
        if timings.get("pruned_ms"):
            self.monitor.add_pruned(int(analysis.accounting.kept_patches), timings["pruned_ms"], overlapped)
        if timings.get("dense_ms"):
            self.monitor.add_dense(timings["dense_ms"], overlapped)

    def latency(self, analysis) -> LatencyEstimate:
        """The monitor's medians at this analysis' kept count (see :class:`LatencyEstimate`)."""
        return self.monitor.estimate(int(analysis.accounting.kept_patches))

    def speedup(self, analysis) -> float | None:
        """The speed-up the page shows for this image: dense / (BAViT + CCA + pruned YOLOS at its kept count),
        medians of warm runs (:class:`LatencyMonitor`); ``None`` while warming up or without a detector run."""
        if not analysis.timings_ms.get("pruned_ms"):
            return None
        return self.latency(analysis).speedup

    def curve(self, session: ImageSession, cca_steps: int) -> viz.CurvePlot:
        """Sparsity and MAC-ratio speed-up (dense / (BAViT + pruned)) against threshold for this image.

        Computed with the Predictor's own patch selection, CCA and resampling. Returns the session's cached plot, or
        draws a new one without caching it (:meth:`record` keeps it, so it is drawn once per CCA setting).
        """
        plot = session.plots.get(cca_steps)
        if plot is None:
            predictor = self.predictor
            probs = torch.from_numpy(np.array(session.prepared.fg_prob))
            sparsity, speedup = [], []
            for threshold in CURVE_THRESHOLDS:
                keep_mask = keep_mask_from_probs(probs, threshold=float(threshold), cca_steps=cca_steps,
                                                 grid=predictor.yolos_grid, resample=predictor.resample_mode).keep_mask
                acc = token_accounting(int(keep_mask.sum()), predictor.yolos_config, predictor.bavit.config)
                sparsity.append(100.0 * acc.sparsity)
                speedup.append(acc.flop_ratio)
            plot = viz.curve_plot(CURVE_THRESHOLDS, sparsity, speedup)
        return plot

    # ------------------------------------------------------------------ text panels
    def sparsity_text(self, analysis, controls: Controls) -> str:
        """The sparsity panel: this image's sparsity (the heading), how it was set and the kept counts."""
        acc = analysis.accounting
        kept = int(acc.kept_patches)
        pruned = acc.yolos_patches - kept
        own = 100.0 * acc.sparsity
        settings = analysis.settings
        threshold = settings.get("threshold")
        raw, after = int(analysis.grid_raw.sum()), int(analysis.grid_cca.sum())
        cells = analysis.grid_raw.size
        lines = [f"### Sparsity: {own:.1f}%"]
        if settings.get("sparsity") is not None:  # calibrated: one threshold, this image's sparsity follows its content
            calibration = self.predictor.calibration
            source = f": {calibration.source}" if calibration.source else ""
            lines.append(f"Mean sparsity {100.0 * settings['sparsity']:.0f}% over images (threshold {threshold:.2f}, "
                         f"calibrated on {calibration.images} images{source}); **this image: {own:.1f}%**.")
            how = f"threshold {threshold:.2f}"
        elif settings.get("keep_ratio") is not None:  # top-k: this image held at the target
            k = max(1, round(settings["keep_ratio"] * cells))
            lines.append(f"This image is held at the target {controls.target_sparsity:.0f}% by top-k: its {k} most "
                         f"probable of {cells} BAViT tokens are kept, the count closest to the target after CCA; "
                         f"**this image: {own:.1f}%**.")
            how = f"top {k} BAViT tokens"
        else:
            how = f"threshold {threshold:.2f}"
        lines.append(f"{pruned} of {acc.yolos_patches} YOLOS patches pruned, {kept} kept ({how}, CCA "
                     f"{controls.cca_steps} steps). BAViT FG tokens: {raw} of {cells} before CCA, {after} after.")
        return "\n\n".join(lines)

    @staticmethod
    def tokens_table(analysis) -> str:
        acc = analysis.accounting
        return (
            "| Tokens (paper Table 2) | count |\n|---|---:|\n"
            f"| BAViT ({acc.bavit_patches} × {acc.bavit_layers} layers) | {acc.bavit_tokens} |\n"
            f"| YOLOS dense ({acc.yolos_patches} × {acc.yolos_layers} layers) | {acc.yolos_dense_tokens} |\n"
            f"| YOLOS pruned ({int(acc.kept_patches)} kept × {acc.yolos_layers} layers) | {acc.yolos_pruned_tokens} |\n"
            f"| Total (BAViT + YOLOS pruned) | {acc.total_tokens} |\n"
            f"| Reduction vs dense (Eq. 4) | {acc.reduction_pct:.2f}% |\n"
            f"| GMACs: YOLOS dense → BAViT + YOLOS pruned | {acc.dense_macs / 1e9:.2f} → {acc.pipeline_macs / 1e9:.2f} |"
        )

    def latency_text(self, analysis, controls: Controls, estimate: LatencyEstimate | None = None) -> str:
        """The latency panel: medians of warm runs (:attr:`monitor`) at this image's kept count, how many runs each
        is, and the speed-up they give; "warming up" until the monitor has enough warm runs."""
        t = analysis.timings_ms
        note = getattr(analysis, "latency_note", "") or ("" if self.predictor.detector_ready else "YOLOS-tiny architecture, random init (latency only)")
        note = f"\n\n_{note}_" if note else ""
        if not controls.detect or not t.get("pruned_ms"):
            reason = ("Detector off: grid-only update (tick *Run detector* to measure latency)." if not controls.detect
                      else "No detector: grids only, no latency to compare.")
            return reason + note
        est = estimate if estimate is not None else self.latency(analysis)
        cells = self.predictor.yolos_grid ** 2

        def ms(value: float | None, spec: str = ".1f") -> str:
            return "…" if value is None else format(value, spec)

        curve = est.pruned_source == "start-up curve"
        lines = ["| Latency (this machine) | median ms | warm runs |", "|---|---:|---:|",
                 f"| BAViT | {ms(est.bavit_ms)} | {est.bavit_runs} |",
                 f"| CCA | {est.cca_ms:.2f} | {est.cca_runs} |",
                 f"| YOLOS pruned, {est.kept} kept | {ms(est.pruned_ms)} | "
                 f"{'start-up curve' if curve else est.pruned_runs} |",
                 f"| **BAViT + CCA + YOLOS pruned** | **{ms(est.pipeline_ms)}** | |",
                 f"| YOLOS dense | {ms(est.dense_ms)} | {est.dense_runs} |"]
        text = "\n".join(lines)
        if est.speedup is not None:
            source = "the start-up latency curve, interpolated" if curve else "recent warm runs at about this kept count"
            text += (f"\n\n**Speed-up: {est.speedup:.2f}x** for this image ({est.kept} of {cells} patches kept): dense / "
                     f"(BAViT + CCA + pruned), medians of warm runs; pruned from {source}.")
        elif self.monitor.error:
            text += f"\n\n**Speed-up: not available**: the latency warm-up failed ({self.monitor.error})."
        else:
            text += (f"\n\n**Speed-up: warming up** (timing the models in the background: {est.dense_runs} of "
                     f"{MIN_DENSE_RUNS} warm dense runs so far).")
        points = self.monitor.curve()
        if points:
            text += "\n\nStart-up curve, YOLOS pruned ms by kept patches: " + " · ".join(f"{k}: {v:.0f}" for k, v in points) + "."
        return text + note

    @staticmethod
    def gt_text(session: ImageSession, analysis) -> str:
        if session.gt is None:
            return ("No ground truth for this image. Open *Paint your own ground truth* below, paint the objects and press "
                    "**Compare with painted GT** (or pick a COCO example when a COCO dataset is configured).")
        raw, after = grid_stats(session.gt, analysis.grid_raw), grid_stats(session.gt, analysis.grid_cca)
        return (
            f"GT: {session.gt_source}; {int((session.gt == 1).sum())} of {session.gt.size} tokens FG.\n\n"
            "| | token accuracy | FG recall | FG IoU |\n|---|---:|---:|---:|\n"
            f"| before CCA | {_fmt(raw['token_accuracy'])} | {_fmt(raw['fg_recall'])} | {_fmt(raw['fg_iou'])} |\n"
            f"| after CCA | {_fmt(after['token_accuracy'])} | {_fmt(after['fg_recall'])} | {_fmt(after['fg_iou'])} |"
        )

    # ------------------------------------------------------------------ the page
    def render(self, session: ImageSession, controls: Controls) -> dict[str, Any]:
        """Everything the page shows for the current image and controls; reads the session, never changes it.

        Returns a dict of plain values: ``grid_raw``, ``grid_cca``, ``curve`` (PIL images); ``det_pruned``,
        ``det_dense``, ``gt_confusion`` (PIL image, or ``None`` = hide); ``det_message``, ``sparsity``, ``tokens``,
        ``latency``, ``gt_stats`` (markdown); ``analysis`` (the Predictor's Analysis); ``record`` (a
        :class:`ViewRecord`: what to keep in the session, see :meth:`record`). Event handlers use :meth:`update`,
        which renders and records under the session's gate.
        """
        analysis = self.analyze(session, controls)
        estimate = self.latency(analysis)
        speedup = estimate.speedup if controls.detect and analysis.timings_ms.get("pruned_ms") else None
        x = self.effective_threshold(session, controls, analysis)
        cca_steps = int(controls.cca_steps)
        base = self.curve(session, cca_steps)
        plot = base.with_points((x, 100.0 * analysis.accounting.sparsity, speedup), session.measured.get(cca_steps, ()))
        view: dict[str, Any] = {
            "analysis": analysis,
            "record": ViewRecord(cca_steps=cca_steps, curve=base, point=None if speedup is None else (x, speedup)),
            "grid_raw": viz.grid_overlay(session.display, analysis.grid_raw),
            "grid_cca": viz.grid_overlay(session.display, analysis.grid_cca, before=analysis.grid_raw),
            "sparsity": self.sparsity_text(analysis, controls),
            "tokens": self.tokens_table(analysis),
            "latency": self.latency_text(analysis, controls, estimate),
            "curve": plot,
            "gt_stats": self.gt_text(session, analysis),
            "gt_confusion": None if session.gt is None else viz.confusion_overlay(session.display, session.gt, analysis.grid_cca),
            "det_pruned": None,
            "det_dense": None,
        }
        if not self.predictor.detector_ready:
            view["det_message"] = self.no_detector_message()
        elif controls.detect:
            detections = analysis.detections or []
            view["det_pruned"] = viz.draw_detections(session.display, detections, analysis.image_size)
            view["det_message"] = f"{len(detections)} detections from the pruned YOLOS (score threshold of the Predictor)."
        else:
            view["det_message"] = "Detector off: tick *Run detector* to see detections and latency."
        if self.predictor.detector_ready and controls.show_dense and session.dense_detections is not None:
            view["det_dense"] = viz.draw_detections(session.display, session.dense_detections, analysis.image_size)
        return view

    @staticmethod
    def record(session: ImageSession, record: ViewRecord) -> None:
        """Keep what a render measured: the curve for its CCA setting and its speed-up point (last 200 per setting)."""
        with session.gate.hold():
            session.plots.setdefault(record.cca_steps, record.curve)
            if record.point is not None:
                points = session.measured.get(record.cca_steps, ())
                session.measured[record.cca_steps] = (*points, record.point)[-MEASURED_POINTS:]

    def update(self, session: ImageSession, controls: Controls) -> dict[str, Any] | None:
        """One control event: the page for ``controls``, or ``None`` when a newer control event of this session
        superseded this one (the caller leaves the page as it is; the newer event renders).

        Takes a ticket on entry and runs alone in ticket order (:class:`SessionGate`): measures the dense detector
        once if dense detections are to be shown, renders and records. The check for a newer event happens before the work and
        again after it, so a stale view is never returned once a newer event is waiting.
        """
        with session.gate.hold(supersede=("view",)) as ticket:
            if session.gate.superseded(ticket):
                return None
            if controls.show_dense and self.predictor.detector_ready and session.dense_ms is None:
                self.measure_dense(session, controls)  # dense detections to show; the latency comes from the monitor
            view = self.render(session, controls)
            self.record(session, view["record"])
            return None if session.gate.superseded(ticket) else view

    def change_mode(self, session: ImageSession, controls: Controls) -> tuple[bool, dict[str, Any] | None]:
        """A mode event: ``(show_mode, view)``. ``view`` as :meth:`update`; ``show_mode`` is False when a newer mode
        event of this session will set the sliders' visibility (so only the newest mode's visibility is sent: a
        newer non-mode event carries the same mode but does not set the visibility)."""
        with session.gate.hold(supersede=("view", "mode")) as ticket:
            view = self.update(session, controls)  # re-entrant: runs under this ticket
            return not session.gate.superseded(ticket, "mode"), view

    @staticmethod
    def retire(session: ImageSession | None) -> None:
        """A session is being replaced (new image, or cleared): events on it still waiting skip their work, and
        one running now finishes before this returns (so its outputs reach the page before the new image's)."""
        if session is not None:
            with session.gate.hold(supersede=("view",)):  # not "mode": the sliders do not belong to the image
                pass

    def paint_gt(self, session: ImageSession, editor_value, controls: Controls) -> dict[str, Any] | None:
        """Use the painting as GT and render the comparison; ``None`` when nothing is painted.

        Runs in the session's turn order but supersedes no control event (their settings must still be rendered).
        """
        with session.gate.hold():
            if not self.set_painted_gt(session, editor_value):
                return None
            view = self.render(session, controls)
            self.record(session, view["record"])
            return view

    def effective_threshold(self, session: ImageSession, controls: Controls, analysis=None) -> float:
        """The threshold on the plot's x axis: the one the analysis used (the slider's or the calibrated one), or
        in top-k mode the k-th highest FG probability. Without ``analysis``, from :meth:`selection`."""
        settings = analysis.settings if analysis is not None else self.selection(session, controls)
        if settings.get("keep_ratio") is not None:
            probs = np.sort(session.prepared.fg_prob.ravel())[::-1]
            return float(probs[max(0, round(settings["keep_ratio"] * probs.size) - 1)])
        if settings.get("threshold") is not None:
            return float(settings["threshold"])
        return self.predictor.calibration.threshold(float(settings["sparsity"]), int(controls.cca_steps))

    def gt_grid_image(self, session: ImageSession) -> Image.Image | None:
        """The GT patch grid over the image, or ``None`` without GT."""
        return None if session.gt is None else viz.grid_overlay(session.display, session.gt == 1)

    def set_painted_gt(self, session: ImageSession, editor_value) -> bool:
        """Use the user's painting (``gr.ImageEditor`` value) as this image's GT; False when nothing is painted."""
        mask = painted_mask(editor_value)
        if mask is None:
            return False
        from ..core.labels import labels_from_mask

        gt = labels_from_mask(mask, grid=session.prepared.fg_prob.shape).numpy()
        with session.gate.hold():
            session.gt, session.gt_source = gt, "painted in the editor"
        return True

    def api_result(self, payload: Any, threshold: float = 0.5, cca_steps: int = 3, keep_ratio: float | None = None,
                   detect: bool = True, sparsity: float | None = None) -> dict[str, Any]:
        """The ``analyze`` API endpoint: one image and settings in, the numbers as JSON-able dict out.

        Settings are parsed by :meth:`bavit.pruning.settings.PruningSettings.from_api`, like every other entry
        point's. ``keep_ratio`` in (0, 1] keeps that fraction of BAViT's tokens (top-k); ``sparsity``, a fraction
        in the checkpoint's calibrated range (``[0, 0.95]`` for the shipped ones; 0.35 for 35%), sets a calibrated
        mean sparsity over images (paper Table 2; needs a calibrated checkpoint), this image's own sparsity
        following its content. ``None`` or 0 turns either off; with both off, ``threshold`` is used. The image is
        read by :meth:`read_image`, as the page's.
        Keys: ``threshold`` (the one used: given or calibrated; ``None`` with ``keep_ratio``), ``keep_ratio``,
        ``target_sparsity`` (the ``sparsity`` asked for, or ``None``), ``cca_steps``, ``sparsity`` (this image's:
        fraction of the 1024 YOLOS patches pruned), ``kept_patches``, ``tokens`` (Table 2 accounting),
        ``timings_ms``, ``image_size`` ([w, h] analysed), ``source_size`` ([w, h] as uploaded), ``fg_tokens_raw`` / ``fg_tokens_cca`` (of 576), ``grid_cca`` (24
        strings of 0/1), ``detector_ready``, ``detector_status``, ``detections`` (list, or ``None`` without detector
        weights), ``latency_note``; ``speedup`` (what the page shows at this kept count: medians of warm runs;
        ``None`` while warming up or with ``detect`` off) and ``latency_ms`` (what it used: ``dense``, ``bavit``,
        ``cca``, ``pruned``, ``pipeline`` ms, ``dense_runs``, ``bavit_runs``, ``pruned_runs`` (warm runs behind
        each median), ``pruned_source``, ``warming_up``, ``kept``; :meth:`bavit.app.latency.LatencyEstimate.as_dict`).
        """
        setting = PruningSettings.from_api(threshold=threshold, cca_steps=cca_steps, keep_ratio=keep_ratio,
                                           sparsity=sparsity)
        if setting.sparsity is not None and not self.calibrated:
            raise BAViTError("sparsity needs a calibrated BAViT checkpoint and this one has no calibration "
                             "(python -m bavit calibrate --checkpoint CKPT); use keep_ratio or threshold")
        detect = flag_value("detect", detect)
        image, _ = self.read_image(payload)
        with self.monitor.measuring() as run:
            analysis = self.predictor.analyze(image, **setting.selection, cca_steps=setting.cca_steps, detect=detect)
        self._record(analysis, run.overlapped)
        estimate = self.latency(analysis)
        acc = analysis.accounting
        used = analysis.settings.get("threshold")
        return {
            "threshold": None if used is None else float(used),
            "keep_ratio": setting.keep_ratio,
            "target_sparsity": setting.sparsity,
            "cca_steps": setting.cca_steps,
            "sparsity": float(acc.sparsity),
            "kept_patches": int(acc.kept_patches),
            "tokens": {k: (v.item() if hasattr(v, "item") else v) for k, v in acc.as_dict().items()},
            "timings_ms": {k: float(v) for k, v in analysis.timings_ms.items()},
            "image_size": [int(v) for v in analysis.image_size],
            "source_size": [int(v) for v in image.info["source_size"]],
            "fg_tokens_raw": int(analysis.grid_raw.sum()),
            "fg_tokens_cca": int(analysis.grid_cca.sum()),
            "grid_cca": ["".join("1" if v else "0" for v in row) for row in np.asarray(analysis.grid_cca)],
            "detector_ready": bool(self.predictor.detector_ready),
            "detector_status": self.predictor.detector_status,
            "detections": None if analysis.detections is None else [
                {"box": [float(v) for v in d["box"]], "label": str(d["label"]), "score": float(d["score"])}
                for d in analysis.detections
            ],
            "latency_note": getattr(analysis, "latency_note", "") or "",
            "speedup": estimate.speedup if analysis.timings_ms.get("pruned_ms") else None,
            "latency_ms": estimate.as_dict(),
        }

    def initial_detection_message(self) -> str:
        if not self.predictor.detector_ready:
            return self.no_detector_message()
        return "Load an image to see the pruned YOLOS detections."

    def no_detector_message(self) -> str:
        return f"**No detections shown: no detector weights.** {self.predictor.detector_status}"

    def banner_text(self) -> str:
        if self.predictor.detector_ready:
            return ""
        return ("⚠️ **Detections are off: no detector weights.** Grids, sparsity, token counts and latency still work; "
                "latency is measured on the YOLOS-tiny architecture with random weights.\n\n"
                f"{self.predictor.detector_status}")
