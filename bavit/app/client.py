"""What the browser needs to redraw the patch grids itself: the page's script (:func:`head_html`: the files of
``bavit/app/static/``) and the messages :mod:`bavit.app.handlers` send it through the page's hidden ``#page-state``
textbox (no Gradio here).

While the detector is off, a slider move is answered in the page: ``rule.js`` applies the keep-mask rule to the
image's FG probabilities (sent once per image), draws both grid overlays, the sparsity text, the token table and the
curve's marker, and asks the server nothing. The server stays the source of truth: every server event sends its
own grids (``"view"``), which the page draws as they are. Messages (JSON objects, ``kind`` first):

- ``"image"``: a new image: ``payload`` (:func:`image_payload`), its server ``view`` and the ``curve`` base plot;
- ``"view"``: one server render: grid bits, kept count, whether the image has GT, the curve's point
  (:func:`view_message`);
- ``"curve"``: the base plot of one CCA setting, for the page to draw markers on (:func:`curve_message`);
- ``"clear"``: the image was removed.

Every message has a fresh ``nonce``, so the textbox's value always changes and the page always applies it.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..pruning.accounting import token_accounting
from . import viz
from .curve import CurvePlot
from .session import (
    MODE_SPARSITY,
    MODE_THRESHOLD,
    MODE_TOPK,
    Controls,
    ImageSession,
    effective_threshold,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page's script, in load order: the ports of the Python rules and texts (tested against Python by
# tests/test_app_browser.py), the drawing, then the state and the events that use them.
SCRIPTS = ("rule.js", "texts.js", "draw.js", "grid.js")
DISPLAY_QUALITY = 90  # JPEG quality of the display image the page draws its overlays on (sent once per image)
_NONCES = itertools.count(1)
_PIPELINE_MACS: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()


def head_html() -> str:
    """``<style>`` and ``<script>`` for ``gr.Blocks(head=...)``: ``static/grid.css``, and the :data:`SCRIPTS` in
    order as one script, in one function scope (they share their functions, and only ``window.bavitGrid`` leaves it)."""
    css = (STATIC_DIR / "grid.css").read_text(encoding="utf-8")
    js = "\n".join((STATIC_DIR / name).read_text(encoding="utf-8") for name in SCRIPTS)
    return f'<style>\n{css}</style>\n<script>\n(() => {{\n"use strict";\n{js}}})();\n</script>\n'


def grid_bits(grid: np.ndarray) -> str:
    """``[G, G]`` bool grid -> ``G*G`` characters ``0``/``1``, row-major."""
    return "".join("1" if value else "0" for value in np.asarray(grid, dtype=bool).ravel())


def data_url(image: Image.Image | np.ndarray, fmt: str = "JPEG", **options: Any) -> str:
    """An RGB image as a ``data:`` URL (``fmt`` ``"JPEG"`` or ``"PNG"``)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, fmt, **options)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def pipeline_macs(predictor) -> list[int]:
    """``[Y*Y + 1]`` BAViT + pruned-YOLOS MACs for each kept-patch count (the token table's last row), per
    predictor (computed once)."""
    macs = _PIPELINE_MACS.get(predictor)
    if macs is None:
        patches = predictor.yolos_grid ** 2
        macs = [int(token_accounting(kept, predictor.yolos_config, predictor.bavit.config).pipeline_macs)
                for kept in range(patches + 1)]
        _PIPELINE_MACS[predictor] = macs
    return macs


def image_payload(predictor, session: ImageSession) -> dict[str, Any]:
    """Everything the page's script needs to run the keep-mask rule and draw the overlays for this image.

    Keys: ``key`` (the image's content hash), ``probs`` (base64 of the ``[G, G]`` float32 FG probabilities,
    little-endian, row-major), ``side`` (G), ``yolos_grid``, ``resample``, ``image`` (the display image, a JPEG data
    URL), ``width``/``height`` (its size), ``calibration`` (``levels``, ``thresholds`` per CCA steps, ``images``,
    ``source``; ``None`` without one), ``modes``, ``accounting`` (token-table constants and ``pipeline_macs`` per
    kept count), ``palette`` (``[[rgb, alpha]]`` for BG / FG / flipped, :data:`viz.GRID_PALETTE`) and ``line``.
    """
    probs = np.ascontiguousarray(session.prepared.fg_prob, dtype="<f4")
    calibration = predictor.calibration
    probe = token_accounting(0, predictor.yolos_config, predictor.bavit.config)
    return {
        "key": session.prepared.key,
        "probs": base64.b64encode(probs.tobytes()).decode("ascii"),
        "side": int(probs.shape[-1]),
        "yolos_grid": int(predictor.yolos_grid),
        "resample": predictor.resample_mode,
        "image": data_url(session.display, "JPEG", quality=DISPLAY_QUALITY),
        "width": session.display.width,
        "height": session.display.height,
        "calibration": None if calibration is None else {
            "levels": list(calibration.levels),
            "thresholds": {str(steps): list(values) for steps, values in calibration.thresholds.items()},
            "images": calibration.images,
            "source": calibration.source,
        },
        "modes": {"threshold": MODE_THRESHOLD, "sparsity": MODE_SPARSITY, "topk": MODE_TOPK},
        "accounting": {
            "bavit_patches": probe.bavit_patches, "bavit_layers": probe.bavit_layers,
            "yolos_patches": probe.yolos_patches, "yolos_layers": probe.yolos_layers,
            "dense_macs": int(probe.dense_macs), "pipeline_macs": pipeline_macs(predictor),
        },
        "palette": [[list(rgb), alpha]
                    for rgb, alpha in (viz.GRID_PALETTE[cls] for cls in (viz.BG, viz.FG, viz.FLIPPED))],
        "line": [list(viz.LINE_COLOR), viz.LINE_ALPHA],
    }


def _measured(session: ImageSession, cca_steps: int) -> list[list[float]]:
    return [[float(threshold), float(speedup)] for threshold, speedup in session.measured.get(cca_steps, ())]


def view_message(explorer, session: ImageSession, view: dict[str, Any], controls: Controls) -> dict[str, Any]:
    """One server render (:meth:`Explorer.render`'s ``view``) for the page: grid bits before / after CCA, the
    YOLOS patches kept, ``gt`` (the image has a GT grid: its comparison follows the grid, so the page leaves slider
    moves to the server), and the curve's current point ``{cca, threshold, sparsity (%), speedup (x or None)}``
    with the speed-ups measured so far for that CCA setting."""
    analysis, record = view["analysis"], view["record"]
    cca_steps = record.cca_steps
    point = {
        "cca": cca_steps,
        "threshold": effective_threshold(analysis),
        "sparsity": 100.0 * float(analysis.accounting.sparsity),
        "speedup": None if record.point is None else float(record.point[1]),
    }
    return {"kind": "view", "nonce": next(_NONCES), "key": session.prepared.key,
            "raw": grid_bits(analysis.grid_raw), "cca": grid_bits(analysis.grid_cca),
            "kept": int(analysis.accounting.kept_patches), "gt": session.gt is not None,
            "curve": {"cca": cca_steps, "point": point, "measured": _measured(session, cca_steps)}}


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


def encode(message: dict[str, Any]) -> str:
    """The message as the ``#page-state`` textbox's value (compact JSON)."""
    return json.dumps(message, separators=(",", ":"))


__all__ = ["clear_message", "curve_message", "data_url", "encode", "grid_bits", "head_html", "image_message",
           "image_payload", "pipeline_macs", "view_message"]
