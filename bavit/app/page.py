"""What the page shows, as data (no Gradio here): its text panels as markdown (sparsity, tokens of paper Table 2,
latency, the GT comparison, the detection messages, the banner, the dataset view's captions and summary), the
page's script (:func:`head_html`: the files of ``bavit/app/static/``) and the messages the events send it through
the hidden ``#page-state`` textbox.

A slider move is answered in the page from data the server sent ahead: for the image's sparsity control and CCA
setting, the grid ladder (:mod:`bavit.app.ladder`: the grids, this module's sparsity text and token table and the
curve's point at every slider position, all made here in Python), and, with the detector on, the rungs of its
detection ladder (the detection marks, message and latency panel at each keep mask) as the background computes them.
A move to a position the page lacks goes to the server. The server stays the source of truth: every server event
sends its own grids (``"view"``), which the page draws as they are. Messages (JSON objects, ``kind`` first):

- ``"image"``: a new image: ``payload`` (:func:`image_payload`), its server ``view`` and the ``curve`` base plot;
- ``"view"``: one server render: the grids (hex, :func:`grid_hex`, as the ladders'), kept count, whether the image has GT, the curve's point, the detection
  marks, the grid ladder when the page lacks it and the detection ladder's id (:func:`view_message`);
- ``"rungs"``: detection-ladder rungs computed since the last (:func:`rungs_message`), sent by the page's timer;
- ``"curve"``: the base plot of one CCA setting, for the page to draw markers on (:func:`curve_message`);
- ``"clear"``: the image was removed.

Every message has a fresh ``nonce``, so the textbox's value always changes and the page always applies it.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..engine.dataset_costs import CostRow, cost_totals, setting_words
from ..predictor import Analysis
from ..pruning.calibration import Calibration
from ..pruning.detector import RANDOM_INIT_NOTE
from ..pruning.settings import PruningSettings
from . import viz
from .latency import MIN_DENSE_RUNS, LatencyEstimate, LatencyMonitor
from .session import (
    MODE_THRESHOLD,
    Controls,
    ImageSession,
    effective_threshold,
    grid_stats,
)
from .uploads import ANALYSIS_SIDE
from .viz import CurvePlot

TINY_SIDE = 32  # px: smaller images still run, with a warning


def _percent(value: float | None) -> str:
    return "n/a" if value is None else format(value, ".1%")


def _ms(value: float | None) -> str:
    return "…" if value is None else format(value, ".1f")


def tiny_warning(session: ImageSession, bavit_size: int) -> str | None:
    """A warning for an image whose shorter side is under :data:`TINY_SIDE` px (as uploaded, or as analysed after a
    very long side was fitted into :data:`~bavit.app.uploads.ANALYSIS_SIDE`), else ``None``; BAViT stretches it to
    ``bavit_size`` px square."""
    width, height = session.source_size
    analysed = session.prepared.image.size
    if min(width, height, *analysed) >= TINY_SIDE:
        return None
    fitted = "" if analysed == (width, height) else f", {analysed[0]}x{analysed[1]} px once fitted into {ANALYSIS_SIDE} px"
    return f"This image is tiny ({width}x{height} px{fitted}): it is stretched to {bavit_size}x{bavit_size}, so the grid says little."


def sparsity_text(analysis: Analysis, controls: Controls, calibration: Calibration | None) -> str:
    """The sparsity panel: this image's sparsity (the heading), how it was set and the kept counts."""
    acc = analysis.accounting
    kept = int(acc.kept_patches)
    pruned = acc.yolos_patches - kept
    own = 100.0 * acc.sparsity
    settings, threshold = analysis.settings, analysis.threshold
    raw, after = int(analysis.grid_raw.sum()), int(analysis.grid_cca.sum())
    cells = analysis.grid_raw.size
    lines = [f"### Sparsity: {own:.1f}%"]
    if settings.sparsity is not None:  # calibrated: one threshold, this image's sparsity follows its content
        source = f": {calibration.source}" if calibration.source else ""
        lines.append(f"Mean sparsity {100.0 * settings.sparsity:.0f}% over images (threshold {threshold:.2f}, "
                     f"calibrated on {calibration.images} images{source}); **this image: {own:.1f}%**.")
        how = f"threshold {threshold:.2f}"
    elif settings.top_k:  # top-k: this image held at the target
        k = raw
        lines.append(f"This image is held at the target {controls.target_sparsity:.0f}% by top-k: its {k} most "
                     f"probable of {cells} BAViT tokens are kept, the count closest to the target after CCA; "
                     f"**this image: {own:.1f}%**.")
        how = f"top {k} BAViT tokens"
    else:
        how = f"threshold {threshold:.2f}"
    lines.append(f"{pruned} of {acc.yolos_patches} YOLOS patches pruned, {kept} kept ({how}, CCA "
                 f"{controls.cca_steps} steps). BAViT FG tokens: {raw} of {cells} before CCA, {after} after.")
    return "\n\n".join(lines)


def tokens_table(analysis: Analysis) -> str:
    """The token panel: paper Table 2's counts and Eq. 4's reduction for this image's kept patches, and the MACs."""
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


def latency_note(predictor) -> str:
    """What the detector latency is measured on: the loaded weights, or without them the YOLOS-tiny architecture at
    random init (:func:`bavit.app.latency.time_pruned`)."""
    if predictor.detector_ready:
        return "measured on the detector's weights"
    return RANDOM_INIT_NOTE if predictor.detector_requested else "no detector"


def latency_text(analysis: Analysis, controls: Controls, estimate: LatencyEstimate, monitor: LatencyMonitor,
                 note: str) -> str:
    """The latency panel: the monitor's medians of warm runs at this image's kept count (``estimate``), how many
    runs each is, and the speed-up they give; "warming up" until the monitor has enough warm runs."""
    note = f"\n\n_{note}_" if note else ""
    if not controls.detect or not analysis.timings_ms.get("pruned_ms"):
        reason = ("Detector off: grid-only update (tick *Run detector* to measure latency)." if not controls.detect
                  else "No detector: grids only, no latency to compare.")
        return reason + note
    est = estimate
    curve = est.pruned_source == "start-up curve"
    text = "\n".join([
        "| Latency (this machine) | median ms | warm runs |", "|---|---:|---:|",
        f"| BAViT | {_ms(est.bavit_ms)} | {est.bavit_runs} |",
        f"| CCA | {est.cca_ms:.2f} | {est.cca_runs} |",
        f"| YOLOS pruned, {est.kept} kept | {_ms(est.pruned_ms)} | {'start-up curve' if curve else est.pruned_runs} |",
        f"| **BAViT + CCA + YOLOS pruned** | **{_ms(est.pipeline_ms)}** | |",
        f"| YOLOS dense | {_ms(est.dense_ms)} | {est.dense_runs} |",
    ])
    if est.speedup is not None:
        source = "the start-up latency curve, interpolated" if curve else "recent warm runs at about this kept count"
        text += (f"\n\n**Speed-up: {est.speedup:.2f}x** for this image ({est.kept} of "
                 f"{analysis.accounting.yolos_patches} patches kept): dense / (BAViT + CCA + pruned), medians of warm "
                 f"runs; pruned from {source}.")
    elif monitor.error:
        text += f"\n\n**Speed-up: not available**: the latency warm-up failed ({monitor.error})."
    else:
        text += (f"\n\n**Speed-up: warming up** (timing the models in the background: {est.dense_runs} of "
                 f"{MIN_DENSE_RUNS} warm dense runs so far).")
    points = monitor.curve()
    if points:
        text += "\n\nStart-up curve, YOLOS pruned ms by kept patches: " + " · ".join(f"{k}: {v:.0f}" for k, v in points) + "."
    return text + note


def gt_text(session: ImageSession, analysis: Analysis) -> str:
    """The GT panel: token accuracy, FG recall and IoU of the grid before and after CCA, or how to get a GT."""
    if session.gt is None:
        return ("No ground truth for this image. Open *Paint your own ground truth* below, paint the objects and press "
                "**Compare with painted GT** (or pick a COCO example when a COCO dataset is configured).")
    raw, after = grid_stats(session.gt, analysis.grid_raw), grid_stats(session.gt, analysis.grid_cca)
    return (
        f"GT: {session.gt_source}; {int((session.gt == 1).sum())} of {session.gt.size} tokens FG.\n\n"
        "| | token accuracy | FG recall | FG IoU |\n|---|---:|---:|---:|\n"
        f"| before CCA | {_percent(raw['token_accuracy'])} | {_percent(raw['fg_recall'])} | {_percent(raw['fg_iou'])} |\n"
        f"| after CCA | {_percent(after['token_accuracy'])} | {_percent(after['fg_recall'])} | {_percent(after['fg_iou'])} |"
    )


DETECTOR_WARMING = ("**Detector warming up** (its onnxruntime export runs in the background): the grids are here now; "
                    "the detections and the latency follow by themselves in a few seconds.")


def detections_text(predictor, controls: Controls | None = None, detections: list | None = None,
                    cost: str | None = None) -> str:
    """The detection panel's message: no detector weights; no image yet (``controls`` ``None``); the detector off;
    or how many ``detections`` the pruned YOLOS made, and with the dense ones shown what pruning cost (``cost``:
    the matching's line and the pruned detections' AP against the dense ones, with the colours' legend)."""
    if not predictor.detector_ready:
        return f"**No detections shown: no detector weights.** {predictor.detector_status}"
    if controls is None:
        return "Load an image to see the pruned YOLOS detections."
    if not controls.detect:
        return "Detector off: tick *Run detector* to see detections and latency."
    text = f"{len(detections or [])} detections from the pruned YOLOS (score threshold of the Predictor)."
    return text if cost is None else f"{text}\n\n**What pruning cost here:** {cost}\n\n{viz.legend_html(viz.COST_LEGEND)}"


def banner_text(predictor) -> str:
    """The banner above the page: empty with detector weights, else why detections are off."""
    if predictor.detector_ready:
        return ""
    return ("⚠️ **Detections are off: no detector weights.** Grids, sparsity, token counts and latency still work; "
            "latency is measured on the YOLOS-tiny architecture with random weights.\n\n"
            f"{predictor.detector_status}")


# The dataset view's sort choice: (label, cost_rows' sort), most costly first either way.
DATASET_SORTS = (("Object pixels lost", "lost"), ("Sparsity", "sparsity"))
DATASET_SCAN_BUTTON = "Scan the dataset"


def dataset_caption(row: CostRow) -> str:
    """A dataset gallery item's caption, short enough for its thumbnail: the share and count of its object pixels the
    setting prunes away from the detector and its sparsity, e.g. ``"lost 12.3% (1,234 px) · sparsity 45.6%"`` (the
    image's id shows in the GT panel once it is opened)."""
    lost = "no objects" if not row.object_pixels else f"lost {row.lost_fraction:.1%} ({row.object_pixels_lost:,} px)"
    return f"{lost} · sparsity {row.sparsity:.1%}"


def dataset_prompt(split: str) -> str:
    """The dataset view's summary before any scan: what the scan button does."""
    return (f"Press **{DATASET_SCAN_BUTTON}**: BAViT runs once per image of {split} (in batches, once for every "
            "visitor), then the gallery lists the images by what the current setting costs them.")


def dataset_summary(rows: Sequence[CostRow], settings: PruningSettings, sort: str, split: str, total: int | None,
                    scanning: bool = False) -> str:
    """The dataset view's summary: how far the scan is (``scanning``: ``len(rows)`` of ``total`` images so far), then
    for the rows at ``settings`` the images, their mean sparsity and the share of their object pixels lost
    (:func:`~bavit.engine.dataset_costs.cost_totals`), and how the gallery is sorted."""
    lines = []
    if scanning:
        lines.append(f"**Scanning with BAViT: {len(rows)} of {total} images** of {split} …")
    totals = cost_totals(rows)
    if rows:
        threshold = rows[0].threshold
        sort_label = next((label for label, value in DATASET_SORTS if value == sort), sort).lower()
        lines.append(
            f"**{totals['images']} images** of {split} at {setting_words(settings, threshold)}: mean sparsity "
            f"**{_percent(totals['mean_sparsity'])}**, **{_percent(totals['lost_fraction'])} of the object pixels "
            f"lost** ({totals['object_pixels_lost']:,} of {totals['object_pixels']:,} at the detector's input); "
            f"{totals['images_losing_pixels']} of the {totals['images_with_objects']} images with objects lose some.")
        lines.append(f"Sorted by {sort_label}, most first. Click an image to open it in the explorer with its GT; "
                     "after moving the controls, press **Sort at the current setting**.")
    return "\n\n".join(lines)


STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page's script, in load order: the drawing, then the state and the events that use it.
SCRIPTS = ("draw.js", "grid.js")
DISPLAY_QUALITY = 90  # JPEG quality of the display image the page draws its overlays on (sent once per image)
_NONCES = itertools.count(1)
TEXT_KEYS = ("sparsity", "tokens", "latency", "det_message")  # the panels a slider's answer sends in its message


def head_html() -> str:
    """``<style>`` and ``<script>`` for ``gr.Blocks(head=...)``: ``static/grid.css``, and the :data:`SCRIPTS` in
    order as one script, in one function scope (they share their functions, and only ``window.bavitGrid`` leaves it)."""
    css = (STATIC_DIR / "grid.css").read_text(encoding="utf-8")
    js = "\n".join((STATIC_DIR / name).read_text(encoding="utf-8") for name in SCRIPTS)
    return f'<style>\n{css}</style>\n<script>\n(() => {{\n"use strict";\n{js}}})();\n</script>\n'


def grid_hex(grid: np.ndarray) -> str:
    """``[G, G]`` bool grid -> hex of its row-major bits, 4 per digit, the first bit the highest (``G*G/4`` digits,
    the last padded with zeros)."""
    bits = np.asarray(grid, dtype=bool).ravel()
    bits = np.concatenate([bits, np.zeros(-len(bits) % 4, dtype=bool)]).astype(int)
    return "".join("0123456789abcdef"[v] for v in bits.reshape(-1, 4) @ np.array([8, 4, 2, 1]))


def data_url(image: Image.Image | np.ndarray, fmt: str = "JPEG", **options: Any) -> str:
    """An RGB image as a ``data:`` URL (``fmt`` ``"JPEG"`` or ``"PNG"``)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, fmt, **options)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_payload(predictor, session: ImageSession) -> dict[str, Any]:
    """What the page needs to draw this image's overlays and detections: ``key`` (the image's content hash),
    ``side`` (BAViT's grid G), ``image`` (the display image, a JPEG data URL), ``width``/``height`` (its size),
    ``palette`` (``[[rgb, alpha]]`` for BG / FG / flipped, :data:`viz.GRID_PALETTE`), ``line`` and ``detector``
    (the detector runs at all: without one, a slider move never needs the server)."""
    return {
        "key": session.prepared.key,
        "side": int(session.prepared.fg_prob.shape[-1]),
        "image": data_url(session.display, "JPEG", quality=DISPLAY_QUALITY),
        "width": session.display.width,
        "height": session.display.height,
        "palette": [[list(rgb), alpha]
                    for rgb, alpha in (viz.GRID_PALETTE[cls] for cls in (viz.BG, viz.FG, viz.FLIPPED))],
        "line": [list(viz.LINE_COLOR), viz.LINE_ALPHA],
        "detector": bool(predictor.detector_requested),
    }


def ladder_message(ladder) -> dict[str, Any]:
    """A grid ladder (:class:`~bavit.app.ladder.GridLadder`) for the page: ``mode``, ``cca``, ``values`` (the
    slider's positions) and per position ``[raw, mask, kept, x, percent, sparsity, tokens]`` (``raw``/``mask``:
    indices into ``grids``, hex of :func:`grid_hex`; ``x``, ``percent``: the curve's point; ``sparsity``/``tokens``:
    indices into ``texts``), or ``null`` where the server answers (it refuses that setting)."""
    texts: dict[str, int] = {}
    rungs = [None if r is None else [r.raw, r.mask, r.kept, r.x, r.percent, texts.setdefault(r.sparsity, len(texts)),
                                     texts.setdefault(r.tokens, len(texts))]
             for r in ladder.rungs]
    return {"mode": ladder.mode, "cca": ladder.cca_steps, "values": list(ladder.values), "rungs": rungs,
            "slider": "threshold" if ladder.mode == MODE_THRESHOLD else "target",
            "grids": [grid_hex(grid) for grid in ladder.grids], "texts": list(texts)}


def job_info(job) -> dict[str, Any] | None:
    """Which detection ladder (:class:`~bavit.app.ladder.DetectionLadder`) rungs belong to: ``id``, ``mode``,
    ``cca``, ``detect``, ``dense`` (the controls its answers hold for), or ``None``."""
    if job is None:
        return None
    return {"id": job.id, "mode": job.ladder.mode, "cca": job.ladder.cca_steps, "detect": job.controls.detect,
            "dense": job.controls.show_dense}


def rungs_message(session: ImageSession, job, results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Detection-ladder ``results`` the page lacks: per keep mask (``mask`` of its grid ladder, as a string)
    ``detections`` (marks, or ``null``: no panel), ``message``, ``latency`` (markdown) and ``speedup`` (``null``
    when none was measured); a failed rung is ``{"failed": true}`` (the page asks the server there)."""
    return {"kind": "rungs", "nonce": next(_NONCES), "key": session.prepared.key, "job": job_info(job),
            "results": {str(mask): result for mask, result in results.items()}}


def _measured(session: ImageSession, cca_steps: int) -> list[list[float]]:
    """The speed-ups measured for this image at ``cca_steps``: by its views, and by its detection ladder (at every
    position of each keep mask computed), as ``[threshold, speed-up]``."""
    points = [[float(threshold), float(speedup)] for threshold, speedup in session.measured.get(cca_steps, ())]
    job = session.job
    if job is not None and job.ladder.cca_steps == cca_steps:
        speedups = {mask: result.get("speedup") for mask, result in dict(job.results).items()}
        points += [[rung.x, speedups[rung.mask]] for rung in job.ladder.rungs
                   if rung is not None and speedups.get(rung.mask) is not None]
    return points


def view_message(explorer, session: ImageSession, view: dict[str, Any], controls: Controls,
                 slider: bool = False) -> dict[str, Any]:
    """One server render (:meth:`Explorer.render`'s ``view``) for the page: the grids before / after CCA (hex), the
    YOLOS patches kept, ``gt`` (the image has a GT grid: its comparison follows the grid, so the page leaves slider
    moves to the server), the curve's current point ``{cca, threshold, sparsity (%), speedup (x or None)}`` with
    the speed-ups measured so far for that CCA setting; ``detections`` / ``dense`` (marks, ``null`` = hide) where
    the view computed them; the grid ``ladder`` of its sparsity control and CCA setting when the page does not have
    it yet (:func:`ladder_message`) and the ``job`` its detection ladder is (:func:`job_info`); ``controls``
    ``{mode, threshold, target, cca, detect, dense}`` it answers and ``slider`` (it answers a slider move the page asked the server for: the page
    drops it when the slider has moved on since, and asks again) with its ``texts`` (:data:`TEXT_KEYS`, those it
    computed)."""
    analysis, record = view["analysis"], view["record"]
    cca_steps = record.cca_steps
    point = {
        "cca": cca_steps,
        "threshold": effective_threshold(analysis),
        "sparsity": 100.0 * float(analysis.accounting.sparsity),
        "speedup": None if record.point is None else float(record.point[1]),
    }
    message = {"kind": "view", "nonce": next(_NONCES), "key": session.prepared.key,
               "raw": grid_hex(analysis.grid_raw), "cca": grid_hex(analysis.grid_cca),
               "kept": int(analysis.accounting.kept_patches), "gt": session.gt is not None,
               "curve": {"cca": cca_steps, "point": point, "measured": _measured(session, cca_steps)},
               "controls": {"mode": controls.mode, "threshold": controls.threshold,
                            "target": controls.target_sparsity, "cca": controls.cca_steps,
                            "detect": controls.detect, "dense": controls.show_dense},
               "slider": slider}
    for key, name in (("det_pruned", "detections"), ("det_dense", "dense")):
        if key in view:
            message[name] = view[key]
    ladder = view.get("ladder")
    # once per ladder, and again with a grid-only slider answer (the page asked: it lacks the ladder, or lost it)
    if ladder is not None and ((ladder.mode, ladder.cca_steps) not in session.sent or (slider and not controls.detect)):
        session.sent.add((ladder.mode, ladder.cca_steps))
        message["ladder"] = ladder_message(ladder)
    if "job" in view:
        message["job"] = job_info(view["job"])
    if slider:
        message["texts"] = {key: view[key] for key in TEXT_KEYS if key in view}
    return message


def curve_message(session: ImageSession, plot: CurvePlot, cca_steps: int) -> dict[str, Any]:
    """The base plot of one CCA setting (PNG data URL) and its data -> pixel maps, for the page's markers."""
    height, width = plot.base.shape[:2]
    return {"kind": "curve", "nonce": next(_NONCES), "key": session.prepared.key, "cca": int(cca_steps),
            "base": data_url(plot.base, "PNG", compress_level=1), "width": int(width), "height": int(height),
            "left": np.asarray(plot.left, dtype=float).tolist(), "right": np.asarray(plot.right, dtype=float).tolist(),
            "measured": _measured(session, cca_steps)}


def image_message(explorer, session: ImageSession, view: dict[str, Any], controls: Controls) -> dict[str, Any]:
    """A new image: its payload, the server's view of it and the base plot of the view's CCA setting."""
    record = view["record"]
    return {"kind": "image", "nonce": next(_NONCES), "payload": image_payload(explorer.predictor, session),
            "view": view_message(explorer, session, view, controls),
            "curve": curve_message(session, record.curve, record.cca_steps)}


def clear_message() -> dict[str, Any]:
    return {"kind": "clear", "nonce": next(_NONCES)}


MAX_ACK_CHARS = 10_000  # a page's ack lists at most a few hundred keep masks


def read_ack(text: Any) -> dict[str, Any] | None:
    """The page's ack (``{"job": id, "masks": [keep mask, ...]}``: the detection-ladder results it holds), or
    ``None`` when there is none or it is not one (a client's value is never trusted further)."""
    if not isinstance(text, str) or not text or len(text) > MAX_ACK_CHARS:
        return None
    try:
        ack = json.loads(text)
    except ValueError:
        return None
    return ack if isinstance(ack, dict) and isinstance(ack.get("masks"), list) else None


def encode(message: dict[str, Any]) -> str:
    """The message as the ``#page-state`` textbox's value (compact JSON)."""
    return json.dumps(message, separators=(",", ":"))


__all__ = ["DATASET_SORTS", "clear_message", "curve_message", "data_url", "dataset_caption", "dataset_prompt",
           "dataset_summary", "encode",
           "grid_hex", "head_html",
           "image_message", "image_payload", "ladder_message", "read_ack", "rungs_message", "view_message"]
