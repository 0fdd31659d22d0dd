"""The page's text panels, as markdown (no Gradio here): sparsity, tokens (paper Table 2), latency, the GT
comparison, the detection messages and the banner.

``static/texts.js`` ports :func:`sparsity_text` and :func:`tokens_table` (the page answers grid-only slider moves
itself); tests/test_app_browser.py checks the port against these, string for string.
"""
from __future__ import annotations

from ..predictor import Analysis
from ..pruning.calibration import Calibration
from ..pruning.detector import RANDOM_INIT_NOTE
from .gt import grid_stats
from .latency import MIN_DENSE_RUNS, LatencyEstimate
from .session import Controls, ImageSession
from .timing import LatencyMonitor
from .uploads import ANALYSIS_SIDE

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
    random init (:func:`bavit.app.timing.time_pruned`)."""
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


def detections_text(predictor, controls: Controls | None = None, detections: list | None = None) -> str:
    """The detection panel's message: no detector weights; no image yet (``controls`` ``None``); the detector off;
    or how many ``detections`` the pruned YOLOS made."""
    if not predictor.detector_ready:
        return f"**No detections shown: no detector weights.** {predictor.detector_status}"
    if controls is None:
        return "Load an image to see the pruned YOLOS detections."
    if not controls.detect:
        return "Detector off: tick *Run detector* to see detections and latency."
    return f"{len(detections or [])} detections from the pruned YOLOS (score threshold of the Predictor)."


def banner_text(predictor) -> str:
    """The banner above the page: empty with detector weights, else why detections are off."""
    if predictor.detector_ready:
        return ""
    return ("⚠️ **Detections are off: no detector weights.** Grids, sparsity, token counts and latency still work; "
            "latency is measured on the YOLOS-tiny architecture with random weights.\n\n"
            f"{predictor.detector_status}")
