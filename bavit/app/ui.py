"""The Gradio page: layout and event wiring only; the logic is :class:`bavit.app.explorer.Explorer`.

``create_demo(bavit=..., detector=..., data=...)`` loads the Predictor once and returns the ``gr.Blocks``; ``app.py``
queues and launches it. Stable ``elem_id``s for tests and embedding: ``input-image``, ``threshold``, ``cca-steps``,
``grid-raw``, ``grid-cca``, ``detections``, ``tokens``, ``latency``, ``sparsity``, ``gt-compare`` (plus ``mode``,
``target-sparsity``, ``run-detector``, ``show-dense``, ``curve``, ``banner``, ``gt-editor``, ``gt-apply``).

Drawing in the browser. The two grid overlays and the curve are canvases that ``static/grid.js`` draws (loaded
with ``gr.Blocks(head=...)``); the server sends them data, not pictures, through the hidden ``#page-state`` textbox
(:mod:`bavit.app.client`): the image's FG probabilities, display image and calibration once per image, then grid bits
and the curve's point per server event. A slider move calls ``grid.js`` first (a ``js=`` event without a Python
function): with the detector off it applies the keep-mask rule in the page and sets the sparsity text and token table
itself, with no server round trip; with the detector on it clicks the hidden ``#server-update`` button, whose event
runs the pruned YOLOS and sends only what a slider changes. The server stays the source of truth for every other
event. ``gradio_client`` callers keep ``load_image`` / ``set_threshold`` (with the grid and curve images, in
:data:`VIEW_KEYS` order) and ``analyze`` on hidden components.

Event order: the control listeners share one Gradio concurrency group (:data:`CONTROLS_GROUP`), so the queue
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
from ..pruning.settings import cca_steps_value
from . import client, uploads, viz
from .explorer import (
    CSS,
    EXAMPLES_DIR,
    MODE_THRESHOLD,
    Controls,
    Explorer,
    ImageSession,
    ViewRecord,
)
from .session import TARGET_MODES

log = logging.getLogger(__name__)

# Outputs of every re-render, in order (keys of Explorer.render's view).
VIEW_KEYS = ("grid_raw", "grid_cca", "det_pruned", "det_dense", "det_message", "sparsity", "tokens", "latency", "curve",
             "gt_confusion", "gt_stats")
HIDEABLE = {"det_pruned", "det_dense", "gt_confusion"}
# Outputs of the page's server events besides #page-state (the grids and the curve are drawn by static/grid.js).
PAGE_KEYS = ("det_pruned", "det_dense", "det_message", "sparsity", "tokens", "latency", "gt_confusion", "gt_stats")
SLIDER_KEYS = tuple(key for key in PAGE_KEYS if key != "det_dense")  # a slider never changes the dense panel
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
    """The controls' raw values (events skip Gradio's preprocessing, so a client's values arrive as sent) as
    validated :class:`Controls` (one validation: :mod:`bavit.pruning.settings`)."""
    return Controls(mode=mode or MODE_THRESHOLD, threshold=threshold, target_sparsity=target, cca_steps=cca_steps,
                    detect=detect, show_dense=show_dense)


def _view_updates(view: dict[str, Any] | None, keys: tuple[str, ...] = VIEW_KEYS,
                  unchanged: frozenset[str] = frozenset()) -> list[Any]:
    """The view outputs in ``keys`` order; ``None`` (a superseded event) leaves them all as they are, and so does
    ``gr.skip()`` for the keys in ``unchanged`` (values the page already shows)."""
    if view is None:
        return [gr.skip() for _ in keys]
    return [gr.skip() if key in unchanged
            else gr.update(value=view[key], visible=view[key] is not None) if key in HIDEABLE else view[key]
            for key in keys]


def _unchanged_by_slider(explorer: Explorer, session: ImageSession, controls: Controls) -> frozenset[str]:
    """Page outputs a slider move cannot change: the detection panel unless live detections are drawn, the GT
    comparison when the image has no GT."""
    unchanged = set()
    if not (explorer.predictor.detector_ready and controls.detect):
        unchanged |= {"det_pruned", "det_message"}
    if session.gt is None:
        unchanged |= {"gt_confusion", "gt_stats"}
    return frozenset(unchanged)


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

    The page's own events send ``#page-state`` (a :mod:`bavit.app.client` message, JSON) instead of the grid and
    curve images: ``page_image(payload, previous, *controls)`` -> ``[session, page_state, *page, gt_grid, editor]``;
    ``page_controls(session, *controls)`` -> ``[page_state, *page]``; ``page_slider(session, *controls)`` ->
    ``[page_state, *slider]``; ``page_mode(session, *controls)`` -> ``[threshold visibility, target visibility,
    page_state, *page]``; ``page_curve(session, cca_steps)`` -> page_state (the base plot of that CCA setting);
    ``page_paint(session, editor, *controls)`` -> ``[gt_grid, gt_confusion, gt_stats, page_state]``.
    page / slider are the outputs in :data:`PAGE_KEYS` / :data:`SLIDER_KEYS` order.
    """

    on_image: Callable[..., list]
    on_controls: Callable[..., list]
    on_mode: Callable[..., list]
    on_paint: Callable[..., list]
    on_api: Callable[..., dict]
    page_image: Callable[..., list]
    page_controls: Callable[..., list]
    page_slider: Callable[..., list]
    page_mode: Callable[..., list]
    page_curve: Callable[..., Any]
    page_paint: Callable[..., list]


def build_handlers(explorer: Explorer) -> Handlers:
    """The app's event functions around ``explorer``: thin adapters from component values to :class:`Explorer` calls."""

    def load(payload, previous: ImageSession | None, controls: Controls) -> tuple[ImageSession, dict, list]:
        """Open the image, render it and retire the previous session: ``(session, view, [gt_grid, editor])``."""
        session = explorer.open_image(payload)
        warning = explorer.tiny_warning(session)
        if warning:
            gr.Warning(warning)
        view = explorer.update(session, controls)  # a new session: no other event can hold or supersede it yet
        gt_grid = explorer.gt_grid_image(session)
        editor = {"background": session.display, "layers": [], "composite": None}
        explorer.retire(previous)  # control events still on the old image skip; a running one finishes first
        return session, view, [gr.update(value=gt_grid, visible=gt_grid is not None), editor]

    def cleared(previous: ImageSession | None) -> dict[str, Any]:
        """The image was removed: retire its session; the empty view."""
        explorer.retire(previous)
        empty = {key: None for key in VIEW_KEYS}
        empty.update(sparsity="", tokens="", latency="", gt_stats="", det_message=explorer.initial_detection_message())
        return empty

    def page_state(session: ImageSession, view: dict[str, Any] | None, controls: Controls) -> Any:
        return gr.skip() if view is None else client.encode(client.view_message(explorer, session, view, controls))

    @_user_errors
    def on_image(payload, previous: ImageSession | None, mode, threshold, target, cca_steps, detect, show_dense):
        if payload is None:  # cleared
            return [None, *_view_updates(cleared(previous)), gr.update(value=None, visible=False), None]
        session, view, gt = load(payload, previous, _controls(mode, threshold, target, cca_steps, detect, show_dense))
        return [session, *_view_updates(view), *gt]

    @_user_errors
    def page_image(payload, previous: ImageSession | None, mode, threshold, target, cca_steps, detect, show_dense):
        if payload is None:
            empty = cleared(previous)
            return [None, client.encode(client.clear_message()), *_view_updates(empty, PAGE_KEYS),
                    gr.update(value=None, visible=False), None]
        controls = _controls(mode, threshold, target, cca_steps, detect, show_dense)
        session, view, gt = load(payload, previous, controls)
        message = client.image_message(explorer, session, view, controls)
        return [session, client.encode(message), *_view_updates(view, PAGE_KEYS), *gt]

    def page_update(keys: tuple[str, ...], slider: bool, session: ImageSession | None, *values) -> list:
        """A control event of the page: the page state and the outputs ``keys`` (a slider event leaves out what a
        slider cannot change)."""
        if session is None:
            return [gr.skip()] * (1 + len(keys))
        controls = _controls(*values)
        view = explorer.update(session, controls)
        unchanged = _unchanged_by_slider(explorer, session, controls) if slider else frozenset()
        return [page_state(session, view, controls), *_view_updates(view, keys, unchanged)]

    @_user_errors
    def page_controls(session: ImageSession | None, mode, threshold, target, cca_steps, detect, show_dense):
        return page_update(PAGE_KEYS, False, session, mode, threshold, target, cca_steps, detect, show_dense)

    @_user_errors
    def page_slider(session: ImageSession | None, mode, threshold, target, cca_steps, detect, show_dense):
        return page_update(SLIDER_KEYS, True, session, mode, threshold, target, cca_steps, detect, show_dense)

    @_user_errors
    def page_mode(session, mode, threshold, target, cca_steps, detect, show_dense):
        visibility = slider_visibility(mode)  # skipped as in on_mode
        if session is None:
            return visibility + [gr.skip()] * (1 + len(PAGE_KEYS))
        controls = _controls(mode, threshold, target, cca_steps, detect, show_dense)
        show_mode, view = explorer.change_mode(session, controls)
        return ((visibility if show_mode else [gr.skip(), gr.skip()]) + [page_state(session, view, controls)]
                + _view_updates(view, PAGE_KEYS))

    @_user_errors
    def page_curve(session: ImageSession | None, cca_steps):
        if session is None:
            return gr.skip()
        steps = cca_steps_value(cca_steps)
        with session.gate.hold():  # in this session's turn order; supersedes no control event
            plot = explorer.curve(session, steps)
            explorer.record(session, ViewRecord(cca_steps=steps, curve=plot, point=None))
            return client.encode(client.curve_message(session, plot, steps))

    @_user_errors
    def on_controls(session: ImageSession | None, mode, threshold, target, cca_steps, detect, show_dense):
        controls = _controls(mode, threshold, target, cca_steps, detect, show_dense)  # refused even without an image
        if session is None:
            return [gr.skip()] * len(VIEW_KEYS)
        return _view_updates(explorer.update(session, controls))

    def slider_visibility(mode) -> list[Any]:
        """The threshold and target sliders' visibility for ``mode``."""
        target_mode = mode in TARGET_MODES
        return [gr.update(visible=not target_mode), gr.update(visible=target_mode)]

    @_user_errors
    def on_mode(session, mode, threshold, target, cca_steps, detect, show_dense):
        # The sliders' visibility is skipped only when a newer *mode* event sets it: a newer slider move carries
        # this mode but does not set the visibility.
        visibility = slider_visibility(mode)
        if session is None:
            return visibility + [gr.skip()] * len(VIEW_KEYS)
        show_mode, view = explorer.change_mode(session, _controls(mode, threshold, target, cca_steps, detect, show_dense))
        return (visibility if show_mode else [gr.skip(), gr.skip()]) + _view_updates(view)

    @_user_errors
    def on_paint(session: ImageSession | None, editor_value, mode, threshold, target, cca_steps, detect, show_dense):
        return paint(session, editor_value, _controls(mode, threshold, target, cca_steps, detect, show_dense))[1]

    @_user_errors
    def page_paint(session: ImageSession | None, editor_value, mode, threshold, target, cca_steps, detect, show_dense):
        controls = _controls(mode, threshold, target, cca_steps, detect, show_dense)
        view, outputs = paint(session, editor_value, controls)
        return [*outputs, page_state(session, view, controls)]  # the page now has GT: its sliders ask the server

    def paint(session: ImageSession | None, editor_value, controls: Controls) -> tuple[dict, list]:
        if session is None:
            raise gr.Error("Load an image first, then paint its objects.", print_exception=False)
        view = explorer.paint_gt(session, editor_value, controls)
        if view is None:
            raise gr.Error("Nothing painted yet: paint the objects with the brush, then compare.",
                           print_exception=False)
        gt_grid = explorer.gt_grid_image(session)
        return view, [gr.update(value=gt_grid, visible=True), gr.update(value=view["gt_confusion"], visible=True),
                      view["gt_stats"]]

    @_user_errors
    def on_api(payload, threshold, cca_steps, keep_ratio, sparsity=None):
        if payload is None:
            raise gr.Error("no image given", print_exception=False)
        return explorer.api_result(payload, threshold=threshold if threshold is not None else 0.5,
                                   cca_steps=3 if cca_steps is None else cca_steps, keep_ratio=keep_ratio,
                                   sparsity=sparsity)

    return Handlers(on_image=on_image, on_controls=on_controls, on_mode=on_mode, on_paint=on_paint, on_api=on_api,
                    page_image=page_image, page_controls=page_controls, page_slider=page_slider, page_mode=page_mode,
                    page_curve=page_curve, page_paint=page_paint)


def _build_demo(explorer: Explorer, examples: list[str] | None, coco_examples: list[str] | None) -> gr.Blocks:
    examples = example_images() if examples is None else examples
    ready = explorer.predictor.detector_ready
    handlers = build_handlers(explorer)

    explorer.allow_images_from(gr.utils.get_upload_folder())  # the one folder requests may name, with the examples
    with gr.Blocks(title="BAViT Explorer", css=CSS, head=client.head_html(), analytics_enabled=False,
                   delete_cache=(uploads.CACHE_LIFETIME, uploads.CACHE_LIFETIME)) as demo:
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
                gr.HTML(_figures(("grid-raw", "BAViT patch grid (before CCA)"), ("grid-cca", "After CCA")),
                        elem_id="grid-view", padding=False)
                gr.HTML(viz.legend_html(viz.GRID_LEGEND), padding=False)
                with gr.Row():
                    sparsity = gr.Markdown(elem_id="sparsity")
                    latency = gr.Markdown(elem_id="latency")
                with gr.Row():
                    tokens = gr.Markdown(elem_id="tokens")
                    gr.HTML(_figures(("curve", "This image: sparsity and speed-up vs threshold"),),
                            elem_id="curve-view", padding=False)
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
        with gr.Row(elem_classes=["bavit-hidden"]):  # the page's wiring to static/grid.js (rendered, not shown)
            page_state = gr.Textbox(elem_id="page-state", label="page state (JSON for grid.js)", max_lines=1)
            server_update = gr.Button("server update", elem_id="server-update")  # grid.js clicks these two
            curve_request = gr.Button("curve request", elem_id="curve-request")
        with gr.Row(visible=False):  # the API endpoints' components (gradio_client: load_image, set_threshold, analyze)
            api_load_image = gr.Image(type="filepath", label="image")
            api_grid_raw = gr.Image(label="BAViT patch grid (before CCA)", format="jpeg")
            api_grid_cca = gr.Image(label="After CCA", format="jpeg")
            api_curve = gr.Image(label="sparsity and speed-up vs threshold", format="jpeg")
            api_load = gr.Button("load_image")
            api_set_threshold = gr.Button("set_threshold")
            api_image = gr.Image(type="filepath", label="image")
            api_threshold = gr.Number(value=0.5, label="threshold")
            api_cca = gr.Number(value=3, precision=0, label="cca_steps")
            api_keep = gr.Number(value=0, label="keep_ratio (0 = off)")
            api_sparsity = gr.Number(value=0, label="sparsity (target mean over images, a fraction; calibrated checkpoints; 0 = off)")
            api_json = gr.JSON(label="result")
            api_button = gr.Button("analyze")

        control_inputs = [mode, threshold, target, cca_steps, detect, show_dense]
        page_outputs = [page_state, det_pruned, det_dense, det_message, sparsity, tokens, latency, gt_confusion,
                        gt_stats]
        slider_outputs = [page_state, det_pruned, det_message, sparsity, tokens, latency, gt_confusion, gt_stats]
        # One concurrency group for the control listeners: one FIFO queue (arrival order) instead of several; its
        # limit is the queue's default_concurrency_limit (none of them sets a lower one). Per-session order and
        # last-event-wins are Explorer.update's job (several sessions share the group).
        # Raw values (preprocess=False): the controls are validated once, by Controls (bavit.pruning.settings),
        # so a client's "abc" or 2.5 CCA steps gets the same clear error on every event.
        controls_wiring: dict[str, Any] = {"trigger_mode": "always_last", "concurrency_id": CONTROLS_GROUP,
                                           "preprocess": False}
        image.change(handlers.page_image, [image, session_state, *control_inputs],
                     [session_state, *page_outputs, gt_grid, editor], preprocess=False, api_name=False,
                     trigger_mode="always_last")
        # A slider runs static/grid.js only (no Python function): it answers grid-only moves in the page, else it
        # clicks #server-update, whose event reads the same controls.
        for control in (threshold, target, cca_steps):
            control.input(None, [*control_inputs, sparsity, tokens], [sparsity, tokens], api_name=False,
                          show_progress="hidden", js="(...values) => window.bavitGrid.slider(...values)")
        server_update.click(handlers.page_slider, [session_state, *control_inputs], slider_outputs, api_name=False,
                            show_progress="hidden", **controls_wiring)
        for control in (detect, show_dense):
            control.input(handlers.page_controls, [session_state, *control_inputs], page_outputs, api_name=False,
                          **controls_wiring)
        mode.input(handlers.page_mode, [session_state, *control_inputs], [threshold, target, *page_outputs],
                   api_name=False, **controls_wiring)
        # Cheap and order-free (one CCA setting's base plot, drawn once per image): off the queue, which polls every
        # 50 ms. The session stays safe: page_curve holds the session's gate like every other event.
        curve_request.click(handlers.page_curve, [session_state, cca_steps], page_state, api_name=False,
                            show_progress="hidden", queue=False, preprocess=False)
        page_state.change(None, page_state, None, js="(text) => window.bavitGrid.receive(text)")
        # load_image / set_threshold are callable with gradio_client (tests, app-bench) but kept off the API page;
        # they answer with the grid and curve images, in VIEW_KEYS order. (gr.State inputs and outputs are not part
        # of the API signature.)
        api_view_outputs = [api_grid_raw, api_grid_cca, det_pruned, det_dense, det_message, sparsity, tokens, latency,
                            api_curve, gt_confusion, gt_stats]
        api_load.click(handlers.on_image, [api_load_image, session_state, *control_inputs],
                       [session_state, *api_view_outputs, gt_grid, editor], preprocess=False, api_name="load_image",
                       show_api=False, trigger_mode="always_last")
        api_set_threshold.click(handlers.on_controls, [session_state, *control_inputs], api_view_outputs,
                                api_name="set_threshold", show_api=False, show_progress="hidden", **controls_wiring)
        gt_apply.click(handlers.page_paint, [session_state, editor, *control_inputs],
                       [gt_grid, gt_confusion, gt_stats, page_state], api_name=False)
        api_button.click(handlers.on_api, [api_image, api_threshold, api_cca, api_keep, api_sparsity], api_json, api_name="analyze",
                         preprocess=False)
    return demo


def _figures(*figures: tuple[str, str]) -> str:
    """HTML of captioned canvases that static/grid.js draws (``(elem_id, caption)`` each)."""
    return '<div class="bavit-figures">' + "".join(
        f'<div class="bavit-figure" id="{elem_id}"><div class="bavit-caption">{caption}</div><canvas></canvas>'
        '<div class="bavit-placeholder">Load an image to see it here.</div></div>' for elem_id, caption in figures
    ) + "</div>"


def allowed_paths(data: str | Path | None) -> list[str]:
    """Folders ``launch(allowed_paths=...)`` must serve: the COCO image folders the examples come from (read in
    place, never copied into the repo)."""
    if not data:
        return []
    root = Path(data).expanduser()
    return [str(p) for p in sorted(root.iterdir()) if p.is_dir() and p.name != "annotations"] if root.is_dir() else []


def create_explorer(bavit: str | Path | None = None, detector: str | None = None, data: str | Path | None = None,
                    backend: str | None = None) -> Explorer:
    """Load the Predictor (and the optional COCO GT) once: the :class:`Explorer` :func:`create_demo` lays out.

    Args:
        bavit: BAViT checkpoint path (default: the shipped ``checkpoints/bavit-small-coco.safetensors``).
        detector: YOLOS hub id or local directory (default ``hustvl/yolos-tiny``); missing weights -> banner.
        data: COCO-format root for GT comparison of its images (``annotations/instances_*.json`` + split dirs).
        backend: ``"torch"`` or ``"onnxruntime"`` (default: the Predictor's).
    """
    from ..predictor import Predictor
    from ..pruning.detector import DEFAULT_DETECTOR
    from .explorer import CocoGroundTruth

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
    explorer.monitor.start()
    coco = explorer.coco
    return build_demo(explorer, coco_examples=[str(p) for p in coco.examples(coco_examples)] if coco else None)
