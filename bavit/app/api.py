"""The ``analyze`` API endpoint (no Gradio here): one image and its settings in, the numbers as a JSON-able dict
out. Wired in :mod:`bavit.app.ui` (``api_name="analyze"``, arguments ``image, threshold, cca_steps, keep_ratio,
sparsity``); ``Explorer.api_result`` calls :func:`analyze`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..predictor import Analysis, Predictor
from ..pruning.settings import PruningSettings, flag_value
from . import uploads
from .latency import LatencyEstimate
from .panels import latency_note
from .timing import LatencyMonitor, time_pruned


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
