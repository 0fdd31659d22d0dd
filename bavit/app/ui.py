"""The Gradio page: layout and event wiring only; the logic is :class:`bavit.app.explorer.Explorer`.

``create_demo(bavit=..., detector=..., data=...)`` loads the Predictor once and returns the ``gr.Blocks``; ``app.py``
queues and launches it. Stable ``elem_id``s for tests and embedding: ``input-image``, ``threshold``, ``cca-steps``,
``grid-raw``, ``grid-cca``, ``detections``, ``tokens``, ``latency``, ``sparsity``, ``gt-compare`` (plus ``mode``,
``target-sparsity``, ``run-detector``, ``show-dense``, ``curve``, ``banner``, ``gt-editor``, ``gt-apply``).

Event order: the six control listeners share one Gradio concurrency group (:data:`CONTROLS_GROUP`), so the queue
starts them in arrival order, at most ``default_concurrency_limit`` at a time across sessions. Per session,
:meth:`Explorer.update` runs them one at a time in arrival order and skips an event once a newer one is waiting;
a skipped event returns ``gr.skip()`` for every view output, so the page shows the last event's settings.
"""
from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from ..errors import BAViTError
from . import viz
from .explorer import CSS, EXAMPLES_DIR, MODE_THRESHOLD, TARGET_MODES, TINY_SIDE, Controls, Explorer, ImageSession

log = logging.getLogger(__name__)

# Outputs of every re-render, in order (keys of Explorer.render's view).
VIEW_KEYS = ("grid_raw", "grid_cca", "det_pruned", "det_dense", "det_message", "sparsity", "tokens", "latency", "curve",
             "gt_confusion", "gt_stats")
HIDEABLE = {"det_pruned", "det_dense", "gt_confusion"}
IMAGE_HEIGHT = 340  # px: output images are scaled to fit, so portrait photos do not stretch the page
CONTROLS_GROUP = "controls"  # concurrency_id of the six control listeners (one FIFO queue in Gradio)
MODE_INFO = ("Mean sparsity: one calibrated threshold for all images, so each image's sparsity follows its content "
             "(paper Table 2). Top-k: this image held at the target.")
MODE_INFO_UNCALIBRATED = ("Top-k: this image held at the target sparsity. (This checkpoint has no calibration, so a "
                          "mean sparsity over images cannot be set.)")


def _user_errors(fn: Callable) -> Callable:
    """Show input problems (BAViTError) as a gr.Error toast; unexpected failures too, after logging them."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except BAViTError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except MemoryError:
            raise gr.Error("out of memory while processing this image; try a smaller one", print_exception=False) from None
        except Exception as exc:  # keep the app up and say what happened
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error(f"internal error ({exc.__class__.__name__}: {exc})", print_exception=False) from None

    return wrapper


def _controls(mode, threshold, target, cca_steps, detect, show_dense) -> Controls:
    try:
        return Controls(mode=mode or MODE_THRESHOLD, threshold=float(threshold), target_sparsity=float(target),
                        cca_steps=int(cca_steps), detect=bool(detect), show_dense=bool(show_dense))
    except (TypeError, ValueError) as exc:  # load_image skips Gradio's preprocessing: raw values from a client
        raise BAViTError(f"invalid control values ({exc})") from None


def _view_updates(view: dict[str, Any] | None) -> list[Any]:
    """The view outputs in :data:`VIEW_KEYS` order; ``None`` (a superseded event) leaves them all as they are."""
    if view is None:
        return [gr.skip() for _ in VIEW_KEYS]
    return [gr.update(value=view[key], visible=view[key] is not None) if key in HIDEABLE else view[key] for key in VIEW_KEYS]


def example_images(directory: Path = EXAMPLES_DIR) -> list[str]:
    """The gallery's images (``assets/examples/*.jpg|png``), sorted by name."""
    return sorted(str(p) for p in directory.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))


def build_demo(explorer: Explorer, examples: list[str] | None = None, coco_examples: list[str] | None = None) -> gr.Blocks:
    """Lay out the page around ``explorer`` (shared by all sessions; per-session data lives in ``gr.State``)."""
    with warnings.catch_warnings():  # Gradio 5 API that Gradio 6 renames (css, show_api, api_name=False)
        warnings.filterwarnings("ignore", message=".*Gradio 6", category=DeprecationWarning)
        return _build_demo(explorer, examples, coco_examples)


@dataclass(frozen=True)
class Handlers:
    """The event functions :func:`build_demo` wires (callable without a browser, e.g. from tests).

    Arguments are the components' values in wiring order: ``on_image(payload, previous_session, *controls)`` ->
    ``[session, *view, gt_grid, editor]``; ``on_controls(session, *controls)`` -> view; ``on_mode(session, *controls)``
    -> ``[threshold visibility, target visibility, *view]``; ``on_paint(session, editor, *controls)`` -> ``[gt_grid,
    gt_confusion, gt_stats]``; ``on_api(payload, threshold, cca_steps, keep_ratio, sparsity=None)`` -> dict.
    ``*controls`` is ``mode, threshold, target, cca_steps, detect, show_dense`` (``mode`` one of
    :meth:`Explorer.modes`; ``target`` in percent drives both target modes); view is the outputs in
    :data:`VIEW_KEYS` order.
    """

    on_image: Callable[..., list]
    on_controls: Callable[..., list]
    on_mode: Callable[..., list]
    on_paint: Callable[..., list]
    on_api: Callable[..., dict]


def build_handlers(explorer: Explorer) -> Handlers:
    """The app's event functions around ``explorer``: thin adapters from component values to :class:`Explorer` calls."""

    @_user_errors
    def on_image(payload, previous: ImageSession | None, mode, threshold, target, cca_steps, detect, show_dense):
        if payload is None:  # cleared
            explorer.retire(previous)
            empty = {key: None for key in VIEW_KEYS}
            empty.update(sparsity="", tokens="", latency="", gt_stats="", det_message=explorer.initial_detection_message())
            return [None, *_view_updates(empty), gr.update(value=None, visible=False), None]
        controls = _controls(mode, threshold, target, cca_steps, detect, show_dense)
        session = explorer.open_image(payload)
        width, height = session.prepared.image.size
        if min(width, height) < TINY_SIDE:
            gr.Warning(f"This image is tiny ({width}x{height} px): it is upscaled to 384x384, so the grid says little.")
        view = explorer.update(session, controls)  # a new session: no other event can hold or supersede it yet
        gt_grid = explorer.gt_grid_image(session)
        editor = {"background": session.display, "layers": [], "composite": None}
        explorer.retire(previous)  # control events still on the old image skip; a running one finishes first
        return [session, *_view_updates(view), gr.update(value=gt_grid, visible=gt_grid is not None), editor]

    @_user_errors
    def on_controls(session: ImageSession | None, mode, threshold, target, cca_steps, detect, show_dense):
        if session is None:
            return [gr.skip()] * len(VIEW_KEYS)
        controls = _controls(mode, threshold, target, cca_steps, detect, show_dense)
        return _view_updates(explorer.update(session, controls))

    @_user_errors
    def on_mode(session, mode, threshold, target, cca_steps, detect, show_dense):
        # The sliders' visibility is skipped only when a newer *mode* event sets it: a newer slider move carries
        # this mode but does not set the visibility.
        target_mode = mode in TARGET_MODES
        visibility = [gr.update(visible=not target_mode), gr.update(visible=target_mode)]
        if session is None:
            return visibility + [gr.skip()] * len(VIEW_KEYS)
        show_mode, view = explorer.change_mode(session, _controls(mode, threshold, target, cca_steps, detect, show_dense))
        return (visibility if show_mode else [gr.skip(), gr.skip()]) + _view_updates(view)

    @_user_errors
    def on_paint(session: ImageSession | None, editor_value, mode, threshold, target, cca_steps, detect, show_dense):
        if session is None:
            raise gr.Error("Load an image first, then paint its objects.", print_exception=False)
        controls = _controls(mode, threshold, target, cca_steps, detect, show_dense)
        view = explorer.paint_gt(session, editor_value, controls)
        if view is None:
            raise gr.Error("Nothing painted yet: paint the objects with the brush, then compare.", print_exception=False)
        gt_grid = explorer.gt_grid_image(session)
        return [gr.update(value=gt_grid, visible=True), gr.update(value=view["gt_confusion"], visible=True), view["gt_stats"]]

    @_user_errors
    def on_api(payload, threshold, cca_steps, keep_ratio, sparsity=None):
        if payload is None:
            raise gr.Error("no image given", print_exception=False)
        return explorer.api_result(payload, threshold=threshold if threshold is not None else 0.5,
                                   cca_steps=3 if cca_steps is None else cca_steps, keep_ratio=keep_ratio,
                                   sparsity=sparsity)

    return Handlers(on_image=on_image, on_controls=on_controls, on_mode=on_mode, on_paint=on_paint, on_api=on_api)


def _build_demo(explorer: Explorer, examples: list[str] | None, coco_examples: list[str] | None) -> gr.Blocks:
    examples = example_images() if examples is None else examples
    ready = explorer.predictor.detector_ready
    handlers = build_handlers(explorer)

    with gr.Blocks(title="BAViT Explorer", css=CSS, analytics_enabled=False) as demo:
        session_state = gr.State(None, time_to_live=3600)  # per session; dropped 1 h after the last use
        gr.Markdown(
            "# BAViT Explorer: background-aware token pruning\n"
            "A 2-layer ViT (**BAViT**) labels each 16x16 patch foreground or background at 384 px; **YOLOS** then runs "
            "only on the foreground patches at 512 px. Raise the sparsity (or the threshold): fewer kept patches, fewer "
            "tokens, faster detection, and you see what gets lost."
        )
        gr.Markdown(explorer.banner_text(), elem_id="banner", visible=not ready)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image = gr.Image(label="Input image", type="filepath", elem_id="input-image", sources=["upload", "clipboard"],
                                 height=320)
                # The calibrated mode only with a calibration; the default is the paper's setting when there is one.
                default_mode = explorer.default_mode()
                target_mode = default_mode in TARGET_MODES
                mode = gr.Radio(explorer.modes(), value=default_mode, label="Sparsity control", elem_id="mode",
                                info=MODE_INFO if explorer.calibrated else MODE_INFO_UNCALIBRATED)
                threshold = gr.Slider(0.01, 0.99, value=0.5, step=0.01, label="FG-probability threshold (patches above it are kept)",
                                      elem_id="threshold", visible=not target_mode)
                target = gr.Slider(0, 95, value=35, step=1, label="Target sparsity (% of YOLOS patches pruned)",
                                   elem_id="target-sparsity", visible=target_mode)
                cca_steps = gr.Slider(0, 5, value=3, step=1, label="CCA steps (grow FG into cells with >= 3 FG neighbours)",
                                      elem_id="cca-steps")
                with gr.Row():
                    detect = gr.Checkbox(value=True, label="Run detector", elem_id="run-detector")
                    show_dense = gr.Checkbox(value=False, label="Show dense YOLOS too", elem_id="show-dense", interactive=ready)
                if examples:
                    gr.Examples(examples, inputs=image, label="Examples (public domain / CC0, see assets/examples/LICENSE.md)")
                if coco_examples:
                    gr.Examples(coco_examples, inputs=image, label="COCO images from BAVIT_DATA (with ground truth)")
            with gr.Column(scale=2):
                with gr.Row():
                    grid_raw = gr.Image(label="BAViT patch grid (before CCA)", elem_id="grid-raw", format="jpeg", height=IMAGE_HEIGHT, interactive=False)
                    grid_cca = gr.Image(label="After CCA", elem_id="grid-cca", format="jpeg", height=IMAGE_HEIGHT, interactive=False)
                gr.HTML(viz.legend_html(viz.GRID_LEGEND), padding=False)
                with gr.Row():
                    sparsity = gr.Markdown(elem_id="sparsity")
                    latency = gr.Markdown(elem_id="latency")
                with gr.Row():
                    tokens = gr.Markdown(elem_id="tokens")
                    curve = gr.Image(label="This image: sparsity and speed-up vs threshold", elem_id="curve", format="jpeg",
                                     interactive=False)
        with gr.Column(elem_id="detections"):
            gr.Markdown("## Detections")
            det_message = gr.Markdown(explorer.initial_detection_message(), elem_id="detections-message")
            with gr.Row():
                det_pruned = gr.Image(label="Pruned YOLOS", elem_id="detections-pruned", format="jpeg", height=IMAGE_HEIGHT, interactive=False, visible=False)
                det_dense = gr.Image(label="Dense YOLOS", elem_id="detections-dense", format="jpeg", height=IMAGE_HEIGHT, interactive=False, visible=False)
        with gr.Column(elem_id="gt-compare"):
            gr.Markdown("## Ground truth vs prediction")
            with gr.Row():
                gt_grid = gr.Image(label="GT patch grid (>10% object pixels = FG)", elem_id="gt-grid", format="jpeg", height=IMAGE_HEIGHT,
                                   interactive=False, visible=False)
                gt_confusion = gr.Image(label="GT vs prediction (after CCA)", elem_id="gt-confusion", format="jpeg", height=IMAGE_HEIGHT,
                                        interactive=False, visible=False)
                gt_stats = gr.Markdown(elem_id="gt-stats")
            gr.HTML(viz.legend_html(viz.CONFUSION_LEGEND), padding=False)
            with gr.Accordion("Paint your own ground truth", open=False, elem_id="gt-paint"):
                editor = gr.ImageEditor(label="Paint the objects with the brush", type="numpy", elem_id="gt-editor",
                                        sources=(), transforms=(), layers=False, height=420, canvas_size=(512, 512),
                                        brush=gr.Brush(colors=["#ff3b30"], default_size=24, color_mode="fixed"))
                gt_apply = gr.Button("Compare with painted GT", elem_id="gt-apply")
        with gr.Row(visible=False):  # the `analyze` API endpoint's own components
            api_image = gr.Image(type="filepath", label="image")
            api_threshold = gr.Number(value=0.5, label="threshold")
            api_cca = gr.Number(value=3, precision=0, label="cca_steps")
            api_keep = gr.Number(value=0, label="keep_ratio (0 = off)")
            api_sparsity = gr.Number(value=0, label="sparsity (target mean over images, a fraction; calibrated checkpoints; 0 = off)")
            api_json = gr.JSON(label="result")
            api_button = gr.Button("analyze")

        control_inputs = [mode, threshold, target, cca_steps, detect, show_dense]
        view_outputs = [grid_raw, grid_cca, det_pruned, det_dense, det_message, sparsity, tokens, latency, curve,
                        gt_confusion, gt_stats]
        # load_image / set_threshold are callable with gradio_client (tests, app-bench) but kept off the API page.
        # (gr.State inputs and outputs are not part of the API signature.)
        image.change(handlers.on_image, [image, session_state, *control_inputs],
                     [session_state, *view_outputs, gt_grid, editor],
                     preprocess=False, api_name="load_image", show_api=False, trigger_mode="always_last")
        # One concurrency group for the six control listeners: one FIFO queue (arrival order) instead of six; its
        # limit is the queue's default_concurrency_limit (none of them sets a lower one). Per-session order and
        # last-event-wins are Explorer.update's job (several sessions share the group).
        controls_wiring: dict[str, Any] = {"trigger_mode": "always_last", "concurrency_id": CONTROLS_GROUP}
        for control, name in ((threshold, "set_threshold"), (target, False), (cca_steps, False)):
            control.input(handlers.on_controls, [session_state, *control_inputs], view_outputs, api_name=name,
                          show_api=False, show_progress="hidden", **controls_wiring)
        for control in (detect, show_dense):
            control.input(handlers.on_controls, [session_state, *control_inputs], view_outputs, api_name=False,
                          **controls_wiring)
        mode.input(handlers.on_mode, [session_state, *control_inputs], [threshold, target, *view_outputs],
                   api_name=False, **controls_wiring)
        gt_apply.click(handlers.on_paint, [session_state, editor, *control_inputs], [gt_grid, gt_confusion, gt_stats],
                       api_name=False)
        api_button.click(handlers.on_api, [api_image, api_threshold, api_cca, api_keep, api_sparsity], api_json, api_name="analyze",
                         preprocess=False)
    return demo


def allowed_paths(data: str | Path | None) -> list[str]:
    """Folders ``launch(allowed_paths=...)`` must serve: the COCO image folders the examples come from (read in
    place, never copied into the repo)."""
    if not data:
        return []
    root = Path(data).expanduser()
    return [str(p) for p in sorted(root.iterdir()) if p.is_dir() and p.name != "annotations"] if root.is_dir() else []


def create_demo(bavit: str | Path | None = None, detector: str | None = None, data: str | Path | None = None,
                coco_examples: int = 4) -> gr.Blocks:
    """Load the Predictor (and the optional COCO GT) once and build the page.

    Args:
        bavit: BAViT checkpoint path (default: the shipped ``checkpoints/bavit-small-coco.safetensors``).
        detector: YOLOS hub id or local directory (default ``hustvl/yolos-tiny``); missing weights -> banner.
        data: COCO-format root for GT comparison of its images (``annotations/instances_*.json`` + split dirs).
        coco_examples: how many COCO images to add to the examples when ``data`` is given.
    """
    from ..predictor import Predictor
    from ..pruning.detector import DEFAULT_DETECTOR
    from .explorer import CocoGroundTruth

    kwargs: dict[str, Any] = {"detector": detector or DEFAULT_DETECTOR}
    if bavit:
        kwargs["bavit"] = str(bavit)
    predictor = Predictor(**kwargs)
    coco = CocoGroundTruth(data) if data else None
    explorer = Explorer(predictor, coco=coco)
    return build_demo(explorer, coco_examples=[str(p) for p in coco.examples(coco_examples)] if coco else None)
