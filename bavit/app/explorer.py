"""The app's logic: one :class:`Explorer` around the shared :class:`~bavit.predictor.Predictor`, and the ``analyze``
API's answer (:func:`analyze`, :func:`result`); no Gradio here.

The events (:mod:`bavit.app.ui`) call it with a session and the controls; it runs the Predictor and returns the page
as plain values (images drawn by :mod:`.viz`, markdown from :mod:`.page`, ``None`` for a hidden panel), so
everything here is testable without a browser. Per-session data lives in a ``gr.State`` holding an
:class:`~bavit.app.session.ImageSession`; moving a control reruns only the keep-mask rule and the pruned detector.

Thread safety: every event that reads or changes a session runs alone, in arrival order, under the session's
:class:`~bavit.app.session.SessionGate`; a control event superseded by a newer one skips its work
(:meth:`Explorer.update` returns ``None``), so the page shows the last event's settings. :meth:`Explorer.render`
only reads the session.

Latency: every model run of a request is bracketed by ``monitor.measuring()`` and its timings feed the shared
:class:`~bavit.app.latency.LatencyMonitor`; the page shows its medians of warm runs, never a single timing.

The dataset view (with ``--data``): BAViT runs once per image of the dataset's first split, for the whole app
(:class:`~bavit.app.dataset.DatasetScan`, a background thread the first visitor's scan starts; every visitor follows the same scan), and
:meth:`Explorer.dataset_view` lays the images out by what the page's setting costs them
(:func:`~bavit.engine.dataset_costs.cost_rows`, a few ms), so any setting is answered without running BAViT again.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.coco import CocoGroundTruth
from ..engine.cocoeval import result_rows
from ..engine.dataset_costs import ScannedImage, cost_rows, sort_rows
from ..engine.pruning_cost import (
    DetectionDiff,
    ap_against_dense,
    match_detections,
    summary_line,
)
from ..errors import DataError
from ..predictor import Analysis, Predictor
from ..pruning.settings import PruningSettings, flag_value
from . import page, uploads, viz
from .dataset import DatasetScan
from .ladder import DetectionLadder, LadderWorker, Rung, grid_ladder
from .latency import LatencyEstimate, LatencyMonitor, time_pruned
from .page import latency_note
from .session import (
    Controls,
    ImageSession,
    ViewRecord,
    effective_threshold,
)
from .viz import CurvePlot, sparsity_curve

DISPLAY_SIDE = 512  # px: overlays are drawn at this size
# The page's panels a server event can compute, in the order the page's events answer with them: det_pruned and
# det_dense are detection marks the page draws (static/draw.js, with the grids and the curve), sent in #page-state;
# the others are the page's components.
PAGE_KEYS = ("det_pruned", "det_dense", "det_message", "sparsity", "tokens", "latency", "gt_confusion", "gt_stats")
DRAWN_KEYS = ("det_pruned", "det_dense")
RUNG_KEYS = ("det_pruned", "det_message", "latency")  # what a detection ladder's rung holds
LADDERS = 8  # grid ladders a session keeps (sparsity controls x CCA settings seen last)
RUNGS_PER_MESSAGE = 24  # detection-ladder results the page's timer sends at a time


def rung_result(view: dict[str, Any]) -> dict[str, Any]:
    """A detection ladder's rung from a view rendered with :data:`RUNG_KEYS`: the detection marks, the detection
    message, the latency panel and the speed-up measured (the curve's point), or ``None``."""
    point = view["record"].point
    return {"detections": view["det_pruned"], "message": view["det_message"], "latency": view["latency"],
            "speedup": None if point is None else float(point[1])}


def pruning_cost(dense: list[dict], pruned: list[dict] | None, min_score: float) -> tuple[DetectionDiff, str]:
    """What pruning cost this image, with no ground truth: the dense detections matched to the pruned ones
    (:func:`~bavit.engine.pruning_cost.match_detections`) and a line that counts them and gives the pruned
    detections' AP against the dense ones at or above ``min_score`` (COCOeval on this one image)."""
    pruned = pruned or []
    diff = match_detections(dense, pruned)
    ids = {label: index for index, label in enumerate(sorted({d["label"] for d in (*dense, *pruned)}))}

    def rows(detections: list[dict]) -> np.ndarray:  # the COCO result rows of the mAP harness, labels by id
        return result_rows(0, torch.tensor([d["score"] for d in detections]),
                           torch.tensor([ids[d["label"]] for d in detections], dtype=torch.long),
                           torch.tensor([d["box"] for d in detections], dtype=torch.float64).reshape(-1, 4),
                           {index: index for index in ids.values()})

    ap = ap_against_dense([rows(dense)], [rows(pruned)], [0], min_score)["mAP"]
    return diff, summary_line(diff, dense) + ("" if ap is None else f"; AP against the dense detections {ap:.2f}")


class Explorer:
    """The app's logic around one shared Predictor.

    Args:
        predictor: loaded once, shared by all sessions.
        coco: optional COCO-format dataset for GT grids of its images.
        monitor: the latency monitor (default: a new one around ``predictor``, not started: the entry point calls
            ``explorer.monitor.start()`` to time the models in the background).
        image_roots: the folders requests may read images from (default: the examples and ``coco``'s image folders).
        ladders: compute detection ladders in the background (:mod:`bavit.app.ladder`); without them every slider
            move with the detector on is a round trip, and nothing runs between requests but the latency timing.

    With ``coco``, :attr:`dataset` is the dataset view's one scan (:class:`~bavit.app.dataset.DatasetScan`), else
    ``None``.
    """

    def __init__(self, predictor: Predictor, coco: CocoGroundTruth | None = None,
                 monitor: LatencyMonitor | None = None, image_roots: tuple[str | Path, ...] | None = None,
                 ladders: bool = True):
        self.predictor = predictor
        self.coco = coco
        self.monitor = monitor if monitor is not None else LatencyMonitor(predictor)
        default_roots = (uploads.EXAMPLES_DIR, *(coco.image_dirs() if coco else ()))
        self.image_roots = default_roots if image_roots is None else image_roots
        self.ladders = LadderWorker(self.rung, self._ladder_turn) if ladders else None
        self.dataset = DatasetScan(predictor, coco, self.monitor) if coco is not None else None

    def allow_images_from(self, folder: str | Path) -> None:
        """Add ``folder`` (the web framework's upload folder) to :attr:`image_roots`."""
        if Path(folder) not in {Path(root) for root in self.image_roots}:
            self.image_roots = (*self.image_roots, Path(folder))

    def open_image(self, payload: Any) -> ImageSession:
        """Read the uploaded file (:func:`~bavit.app.uploads.read_image`), run BAViT (cached by content) and start a
        session; a COCO image of :attr:`coco` gets its GT grid."""
        image, name = uploads.read_image(payload, self.image_roots)
        coco_entry = None
        if self.coco is not None and self.coco.lookup(name) is not None:
            raw, _ = uploads.read_image(payload, self.image_roots, exif=False)  # the annotations' pixel layout
            coco_entry = self.coco.match(name, raw)
            if coco_entry is not None:
                image = raw
        with self.monitor.measuring():  # BAViT (or its cache: bavit_ms 0); never waits for BAViT's export
            prepared = self.predictor.set_image(image, wait=not self.monitor.building("bavit"))
        session = ImageSession(name=name, prepared=prepared, display=viz.fit_image(image, DISPLAY_SIDE),
                               bavit_ms=prepared.bavit_ms, source_size=tuple(image.info["source_size"]))
        if coco_entry is not None:
            session.coco = coco_entry
            session.gt = self.coco.labels(coco_entry, prepared.fg_prob.shape)
            session.gt_source = f"COCO {coco_entry.split} image {coco_entry.image_id} (instance masks)"
        return session

    def measure_dense(self, session: ImageSession, controls: Controls) -> None:
        """Dense YOLOS once per image, for its detections ("Show dense YOLOS too"); its timing (and the pruned
        run's) goes into :attr:`monitor`. Runs under the session's gate, so two events never both run it."""
        with session.gate.hold():
            if session.dense_ms is not None:
                return
            with self.monitor.measuring() as run:
                analysis = self.predictor.predict(session.prepared, controls.settings, detect=True, dense=True)
            self._record(analysis, run.overlapped)
            session.dense_detections = analysis.dense_detections
            session.dense_ms = analysis.timings_ms.get("dense_ms")

    def analyze(self, session: ImageSession, controls: Controls, app: bool = True) -> Analysis:
        """The keep-mask rule and (with ``controls.detect``) the pruned detector at the controls, on the session's
        BAViT output; a request's timings go into :attr:`monitor` (``app``; a detection ladder's run is bracketed
        as the background's, so that requests overlapping it drop theirs, and its own timing is dropped).
        Without detector weights the detector is still timed (the YOLOS-tiny architecture at random init:
        :func:`~bavit.app.latency.time_pruned`), so the page can show a speed-up."""
        if not controls.detect or not self.predictor.detector_requested or self.detector_warming(controls):
            analysis = self.predictor.predict(session.prepared, controls.settings, detect=False, dense=False)
            self.monitor.add_cca(analysis.timings_ms["cca_ms"])  # no model ran: nothing to bracket
            return analysis
        with self.monitor.measuring(app=app) as run:
            analysis = self.predictor.predict(session.prepared, controls.settings, detect=True, dense=False)
            if not self.predictor.detector_ready:
                analysis = time_pruned(self.predictor, session.prepared.image, analysis)
        if app:  # a ladder's run shares the CPU with the page it draws for: its timing is not a warm median's
            self._record(analysis, run.overlapped)
        return analysis

    def detector_warming(self, controls: Controls) -> bool:
        """The detector's runner is being built (the warm-up's onnxruntime export): an event with the detector on is
        answered without it for now, and the page's timer fills in its detections and latency once it is built."""
        return controls.detect and self.predictor.detector_requested and self.monitor.building("detector")

    def _dense_due(self, session: ImageSession, controls: Controls) -> bool:
        """The dense detections are to be shown and not measured yet, and the detector can run now."""
        return (controls.show_dense and self.predictor.detector_ready and session.dense_ms is None
                and not self.detector_warming(controls))

    def latency(self, analysis: Analysis) -> LatencyEstimate:
        """The monitor's medians at this analysis' kept count."""
        return self.monitor.estimate(int(analysis.accounting.kept_patches))

    def curve(self, session: ImageSession, cca_steps: int) -> CurvePlot:
        """The session's sparsity / speed-up plot for ``cca_steps``, or a new one, not cached (``session.record``
        keeps it, so it is drawn once per CCA setting)."""
        plot = session.plots.get(cca_steps)
        return sparsity_curve(self.predictor, session.prepared, cca_steps) if plot is None else plot

    def render(self, session: ImageSession, controls: Controls, keys: Iterable[str] = PAGE_KEYS,
               app: bool = True) -> dict[str, Any]:
        """What the page shows for the current image and controls, for the panels in ``keys`` only (the others are
        not computed); reads the session, never changes it.

        Returns a dict of plain values: ``analysis`` (the Predictor's Analysis), ``record`` (a
        :class:`~bavit.app.session.ViewRecord` for ``session.record``) and each key of ``keys``: ``det_pruned``,
        ``det_dense`` (detection marks, :func:`~bavit.app.viz.detection_marks`, or ``None`` = hide),
        ``gt_confusion`` (PIL image, or ``None`` = hide); ``det_message``, ``sparsity``, ``tokens``, ``latency``,
        ``gt_stats`` (markdown). ``app``: as :meth:`analyze`.
        """
        predictor = self.predictor
        warming = self.detector_warming(controls)
        analysis = self.analyze(session, controls, app)
        estimate = self.latency(analysis)
        speedup = estimate.speedup if controls.detect and analysis.timings_ms.get("pruned_ms") else None
        base = self.curve(session, controls.cca_steps)
        live = predictor.detector_ready and controls.detect and not warming
        dense = predictor.detector_ready and controls.show_dense and session.dense_detections is not None
        display = session.display.size
        cost = pruning_cost(session.dense_detections, analysis.detections, predictor.score_threshold) \
            if live and dense and any(key in keys for key in ("det_message", "det_pruned")) else None
        panels = {
            "sparsity": lambda: page.sparsity_text(analysis, controls, predictor.calibration),
            "tokens": lambda: page.tokens_table(analysis),
            "latency": lambda: f"{page.DETECTOR_WARMING}\n\n_{page.latency_note(predictor)}_" if warming else
            page.latency_text(analysis, controls, estimate, self.monitor, page.latency_note(predictor)),
            "gt_stats": lambda: page.gt_text(session, analysis),
            "gt_confusion": lambda: None if session.gt is None else viz.confusion_overlay(
                session.display, session.gt, analysis.grid_cca),
            "det_message": lambda: page.DETECTOR_WARMING if warming and predictor.detector_ready else
            page.detections_text(predictor, controls, analysis.detections, cost[1] if cost else None),
            "det_pruned": lambda: (viz.detection_marks(analysis.detections or [], analysis.image_size, display)
                                   if cost is None else viz.cost_marks(session.dense_detections, analysis.detections,
                                                                       cost[0], analysis.image_size,
                                                                       display)) if live else None,
            "det_dense": lambda: viz.detection_marks(session.dense_detections, analysis.image_size,
                                                     display) if dense else None,
        }
        point = None if speedup is None else (effective_threshold(analysis), speedup)
        waiting = speedup is None and controls.detect and "pruned_ms" in analysis.timings_ms and not self.monitor.error
        # what the page's timer will fill in: the latency panel once the medians are there, or, while the detector
        # is being built, the whole detector part of the page (analysis None: render again)
        pending = (None, controls) if warming else (analysis, controls) if waiting else None
        return {"analysis": analysis, "record": ViewRecord(controls.cca_steps, base, point, pending),
                **{key: panels[key]() for key in keys}}

    def update(self, session: ImageSession, controls: Controls,
               keys: Iterable[str] = PAGE_KEYS) -> dict[str, Any] | None:
        """One control event: the page for ``controls``, or ``None`` when a newer control event of this session
        superseded this one (the caller leaves the page as it is; the newer event renders).

        Runs alone in ticket order; measures the dense detector once if dense detections are to be shown, renders
        and records. The check for a newer event happens before the work and again after it."""
        with session.gate.hold(supersede=("view",)) as ticket:
            if session.gate.superseded(ticket):
                return None
            if self._dense_due(session, controls):
                self.measure_dense(session, controls)
            view = self.render(session, controls, keys)
            session.record(view["record"])
            self.follow(session, controls, view)
            return None if session.gate.superseded(ticket) else view

    def _ladder_turn(self) -> bool:
        """The detection ladders' turn: after the latency warm-up (its timings would be dropped as overlapped, and
        the ladder's latency panels would say "warming up"), once no request is being answered."""
        self.monitor.join()
        return self.monitor.wait_quiet()

    def runs_ladder(self, controls: Controls) -> bool:
        """The detector is to run at the controls and can now: its ladder is computed in the background."""
        return (self.ladders is not None and controls.detect and self.predictor.detector_requested
                and not self.detector_warming(controls))

    def follow(self, session: ImageSession, controls: Controls, view: dict[str, Any]) -> None:
        """Keep the session's ladders with ``controls`` (under the session's gate): the grid ladder of this sparsity
        control and CCA setting (``view["ladder"]``), and with the detector on its detection ladder, started (the
        session's previous one cancelled) or moved to this position (``view["job"]``). A view that ran the pruned
        detector gives the detection ladder its rung."""
        ladder = session.ladders.pop((controls.mode, controls.cca_steps), None)
        if ladder is None:
            ladder = grid_ladder(self.predictor, session, controls)
        session.ladders[(controls.mode, controls.cca_steps)] = ladder  # the newest last
        while len(session.ladders) > LADDERS:
            session.sent.discard(next(iter(session.ladders)))
            del session.ladders[next(iter(session.ladders))]
        view["ladder"] = ladder
        job = session.job
        if not self.runs_ladder(controls):
            if job is not None:
                job.cancelled.set()
            session.job = view["job"] = None
            return
        if job is None or not job.matches(session, controls):
            if job is not None:
                job.cancelled.set()
            job = session.job = DetectionLadder(session, ladder, controls)
            self.ladders.submit(job)
        index = ladder.index(controls)
        if index is not None:
            job.center = index
            rung = ladder.rungs[index]
            if rung is not None and all(key in view for key in RUNG_KEYS) and view["record"].waiting is None:
                job.add(rung.mask, rung_result(view))
        view["job"] = job

    def follow_slider(self, session: ImageSession, controls: Controls) -> None:
        """The slider is at ``controls`` in the page (which answers moves itself): the session's detection ladder
        computes the keep masks nearest to it next."""
        job = session.job
        if job is not None and job.matches(session, controls):
            index = job.ladder.index(controls)
            if index is not None:
                job.center = index

    def rung(self, job: DetectionLadder, rung: Rung) -> dict[str, Any]:
        """What the page shows at ``rung`` of ``job`` (:data:`RUNG_KEYS` and the speed-up), rendered in the
        background: the pruned detector's run is timed as the background's, not a request's."""
        return rung_result(self.render(job.session, rung.controls, RUNG_KEYS, app=False))

    def ladder_news(self, session: ImageSession, ack: dict | None) -> dict[int, dict[str, Any]]:
        """Results of the session's detection ladder the page lacks (``ack``: ``{"job": id, "masks": [...]}``, what
        the page holds), at most :data:`RUNGS_PER_MESSAGE`."""
        job = session.job
        if job is None:
            return {}
        have = ack.get("masks", ()) if isinstance(ack, dict) and ack.get("job") == job.id else ()
        return job.missing([mask for mask in have if isinstance(mask, int)], RUNGS_PER_MESSAGE)

    def change_mode(self, session: ImageSession, controls: Controls) -> tuple[bool, dict[str, Any] | None]:
        """A mode event: ``(show_mode, view)``. ``view`` as :meth:`update`; ``show_mode`` is False when a newer mode
        event of this session will set the sliders' visibility."""
        with session.gate.hold(supersede=("view", "mode")) as ticket:
            view = self.update(session, controls)  # re-entrant: runs under this ticket
            return not session.gate.superseded(ticket, "mode"), view

    def paint_gt(self, session: ImageSession, editor_value: Any, controls: Controls) -> dict[str, Any] | None:
        """Use the painting (a raw ``gr.ImageEditor`` value: file payloads, read by :func:`uploads.read_painted`
        under the upload limits) as GT and render the comparison; ``None`` when nothing is painted. Runs in the
        session's turn order but supersedes no control event."""
        layers = uploads.read_painted(editor_value, self.image_roots)
        with session.gate.hold():
            if not session.set_painted_gt({"layers": layers}):
                return None
            view = self.render(session, controls, ("gt_confusion", "gt_stats"))
            session.record(view["record"])
            return view

    def fill_latency(self, session: ImageSession) -> dict[str, Any] | None:
        """What the page's timer fills in for the session's shown view (then once only; ``None`` while it still
        waits, or when nothing waits): the latency panel once the monitor has its medians, when it said "warming
        up"; or, when the view was answered while the detector was being built, ``latency``, ``det_message`` and
        the whole ``view`` rendered now that it is built (its ``controls`` with it), its detection ladder started."""
        with session.gate.hold():
            if session.waiting is None:
                return None
            analysis, controls = session.waiting
            if analysis is None:  # answered without the detector: render its part now, once it is built
                if self.detector_warming(controls):
                    return None
                if self._dense_due(session, controls):
                    self.measure_dense(session, controls)
                view = self.render(session, controls)
                session.record(view["record"])
                self.follow(session, controls, view)
                return {"latency": view["latency"], "det_message": view["det_message"],
                        "view": {**view, "controls": controls}}
            estimate = self.latency(analysis)
            if estimate.speedup is None and not self.monitor.error:
                return None
            session.waiting = None
            return {"latency": page.latency_text(analysis, controls, estimate, self.monitor,
                                                 page.latency_note(self.predictor))}

    def _dataset(self) -> DatasetScan:
        if self.dataset is None:
            raise DataError("this app has no dataset: start it with --data COCO_ROOT (or BAVIT_DATA) for the "
                            "dataset view")
        return self.dataset

    def dataset_view(self, controls: Controls, sort: Any = "lost",
                     scanned: tuple[ScannedImage, ...] | None = None) -> dict[str, Any]:
        """The dataset view at ``controls`` (the page's sparsity control, its value and CCA steps): ``rows``, the
        :class:`~bavit.engine.dataset_costs.CostRow` of every image scanned (``scanned``, default: so far) sorted
        by ``sort`` (``"lost"`` or ``"sparsity"``, most first), ``gallery`` (``(thumbnail, caption)`` per row, in that
        order) and ``summary`` (markdown). BAViT does not run: only the rule on every image (a few ms).

        Raises:
            DataError: the app has no dataset.
            ConfigError: an unknown sort, or a setting the checkpoint cannot resolve.
        """
        scan = self._dataset()
        scanned = scan.scanned if scanned is None else scanned
        rows = cost_rows(scanned, controls.settings, self.predictor, sort=sort)
        summary = page.dataset_summary(rows, controls.settings, sort, scan.split, scan.total,
                                       scanning=scan.running) if scan.started else page.dataset_prompt(scan.split)
        gallery = [(str(scan.thumbnail(row.file_name, row.path)), page.dataset_caption(row)) for row in rows]
        return {"rows": rows, "gallery": gallery, "summary": summary}

    def follow_dataset(self, controls: Controls, sort: Any = "lost", start: bool = True) -> Iterator[dict[str, Any]]:
        """The dataset view (:meth:`dataset_view`) as the one scan goes (:meth:`DatasetScan.follow`): at once, then
        as images come in, then complete; ``start``: start the scan if it has not run (else only show what there
        is). A setting the checkpoint cannot resolve is refused before the scan starts.

        Raises:
            DataError: the app has no dataset, or the scan failed.
            ConfigError: an unknown sort, or a setting the checkpoint cannot resolve.
        """
        scan = self._dataset()
        sort_rows((), sort)  # the sort and the setting, checked before any work
        grid = self.predictor.bavit.config.grid_size
        self.predictor.select(torch.zeros(1, grid, grid), controls.settings)
        for scanned in scan.follow(start=start):
            yield self.dataset_view(controls, sort, scanned)

    def pick_dataset_image(self, file_name: Any) -> Path:
        """The path of the dataset image named ``file_name`` (a gallery item's: any folder part is ignored), to open
        in the explorer; only the dataset's own images.

        Raises:
            DataError: no dataset, or no such image in it.
        """
        self._dataset()
        entry = self.coco.lookup(file_name) if isinstance(file_name, str) and file_name else None
        if entry is None:
            raise DataError("this is not an image of the app's dataset")
        return uploads.confine(entry.path, self.image_roots)

    def api_result(self, payload: Any, threshold: Any = None, cca_steps: Any = None, keep_ratio: Any = None,
                   detect: Any = True, sparsity: Any = None) -> dict[str, Any]:
        """The ``analyze`` API endpoint's answer for one image and its settings (:func:`bavit.app.explorer.analyze`)."""
        return analyze(self.predictor, self.monitor, self.image_roots, payload, threshold, cca_steps,
                           keep_ratio, detect, sparsity)

    def _record(self, analysis: Analysis, overlapped: bool) -> None:
        self.monitor.add_timings(analysis.timings_ms, int(analysis.accounting.kept_patches), overlapped)


def analyze(predictor: Predictor, monitor: LatencyMonitor, image_roots, payload: Any,
            threshold: Any = None, cca_steps: Any = None, keep_ratio: Any = None, detect: Any = True,
            sparsity: Any = None) -> dict[str, Any]:
    """Read the payload's image as the page does (files only under ``image_roots``), run the Predictor (timings
    to ``monitor``) and answer with :func:`result`.

    Settings as :meth:`~bavit.pruning.settings.PruningSettings.from_api` parses them for every entry point:
    ``keep_ratio`` in (0, 1] keeps that fraction of BAViT's tokens (top-k); ``sparsity`` (a fraction, 0.35 for 35%;
    calibrated checkpoints only) sets a calibrated mean sparsity over images (paper Table 2); ``None`` or 0 turns
    either off, and with both off ``threshold`` is used; ``None`` is a setting's default.
    """
    setting = PruningSettings.from_api(threshold=threshold, cca_steps=cca_steps, keep_ratio=keep_ratio,
                                       sparsity=sparsity)
    detect = flag_value("detect", detect)
    image, _ = uploads.read_image(payload, image_roots)
    with monitor.measuring() as run:
        prepared = predictor.set_image(image)
        analysis = predictor.predict(prepared, setting, detect=detect)
        if detect and predictor.detector_requested and not predictor.detector_ready:
            analysis = time_pruned(predictor, prepared.image, analysis)
    kept = int(analysis.accounting.kept_patches)
    monitor.add_timings(analysis.timings_ms, kept, run.overlapped)
    return result(predictor, setting, image, analysis, monitor.estimate(kept))


def result(predictor: Predictor, setting: PruningSettings, image: Image.Image, analysis: Analysis,
           estimate: LatencyEstimate) -> dict[str, Any]:
    """The API's answer for ``analysis`` of ``image`` at ``setting``, with the latency ``estimate`` the page would
    show at its kept count.

    Keys: ``threshold`` (the one used: given or calibrated; ``None`` with ``keep_ratio``), ``keep_ratio``,
    ``target_sparsity`` (the ``sparsity`` asked for, or ``None``), ``cca_steps``, ``sparsity`` (this image's:
    fraction of the 1024 YOLOS patches pruned), ``kept_patches``, ``tokens`` (Table 2 accounting), ``timings_ms``,
    ``image_size`` ([w, h] analysed), ``source_size`` ([w, h] as uploaded), ``fg_tokens_raw`` / ``fg_tokens_cca``
    (of BAViT's G x G tokens), ``grid_cca`` (G strings of 0/1), ``detector_ready``, ``detector_status``, ``detections`` (list, or
    ``None`` without detector weights), ``latency_note``; ``speedup`` (what the page shows at this kept count:
    medians of warm runs; ``None`` while warming up or with ``detect`` off) and ``latency_ms`` (what it used:
    :meth:`~bavit.app.latency.LatencyEstimate.as_dict`: ``dense``, ``bavit``, ``cca``, ``pruned``, ``pipeline`` ms,
    the warm runs behind each median, ``pruned_source``, ``warming_up``, ``kept``).
    """
    acc = analysis.accounting
    return {
        "threshold": analysis.threshold,
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
        "detector_ready": bool(predictor.detector_ready),
        "detector_status": predictor.detector_status,
        "detections": None if analysis.detections is None else [
            {"box": [float(v) for v in d["box"]], "label": str(d["label"]), "score": float(d["score"])}
            for d in analysis.detections
        ],
        "latency_note": latency_note(predictor),
        "speedup": estimate.speedup if analysis.timings_ms.get("pruned_ms") else None,
        "latency_ms": estimate.as_dict(),
    }
