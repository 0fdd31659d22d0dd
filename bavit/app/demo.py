"""The app, built: load the Predictor (and the optional COCO ground truth) once, start the background latency
timing and lay out the page. ``app.py`` queues and launches :func:`create_demo`'s ``gr.Blocks``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from ..predictor import Predictor
from ..pruning.detector import DEFAULT_DETECTOR
from . import curve
from .explorer import Explorer
from .gt import CocoGroundTruth
from .ui import build_demo


def create_explorer(bavit: str | Path | None = None, detector: str | None = None, data: str | Path | None = None,
                    backend: str | None = None) -> Explorer:
    """Load the Predictor (and the optional COCO GT) once: the :class:`Explorer` :func:`create_demo` lays out.

    Args:
        bavit: BAViT checkpoint path (default: the shipped ``checkpoints/bavit-small-coco.safetensors``).
        detector: YOLOS hub id or local directory (default ``hustvl/yolos-tiny``); missing weights -> banner.
        data: COCO-format root for GT comparison of its images (``annotations/instances_*.json`` + split dirs).
        backend: ``"torch"``, ``"onnxruntime"`` or ``"onnxruntime-int8"`` (default: the Predictor's).
    """
    kwargs: dict[str, Any] = {"detector": detector or DEFAULT_DETECTOR}
    if bavit:
        kwargs["bavit"] = str(bavit)
    if backend:
        kwargs["backend"] = backend
    predictor = Predictor(**kwargs)
    coco = CocoGroundTruth(data) if data else None
    return Explorer(predictor, coco=coco)


def create_demo(bavit: str | Path | None = None, detector: str | None = None, data: str | Path | None = None,
                coco_examples: int = 4, backend: str | None = None) -> gr.Blocks:
    """Load the Predictor once (:func:`create_explorer`), start the latency warm-up in the background (the page is
    built and served meanwhile; the latency panel says "warming up" until it has medians) and build the page.

    Args:
        bavit, detector, data, backend: as :func:`create_explorer`.
        coco_examples: how many COCO images to add to the examples when ``data`` is given.
    """
    explorer = create_explorer(bavit=bavit, detector=detector, data=data, backend=backend)
    curve.warm_up()
    explorer.monitor.start()
    coco = explorer.coco
    return build_demo(explorer, coco_examples=[str(p) for p in coco.examples(coco_examples)] if coco else None)
