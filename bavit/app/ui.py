"""The Gradio page, layout and event wiring only: :func:`build_demo` lays out the components around an
:class:`~bavit.app.explorer.Explorer` and wires them to :mod:`bavit.app.handlers` (:mod:`bavit.app.demo` loads the
Explorer). Stable ``elem_id``s for tests and embedding: ``input-image``, ``threshold``, ``cca-steps``,
``grid-raw``, ``grid-cca``, ``detections``, ``tokens``, ``latency``, ``sparsity``, ``gt-compare`` (plus ``mode``,
``target-sparsity``, ``run-detector``, ``show-dense``, ``curve``, ``banner``, ``gt-editor``, ``gt-apply``).

Drawing in the browser. The two grid overlays and the curve are canvases that ``static/*.js`` draws (loaded with
``gr.Blocks(head=...)``); the server sends them data, not pictures, through the hidden ``#page-state`` textbox
(:mod:`bavit.app.client`). A slider move calls ``grid.js`` first (a ``js=`` event without a Python function): with the
detector off it applies the keep-mask rule in the page and sets the sparsity text and token table itself, with no
server round trip; with the detector on it clicks the hidden ``#server-update`` button, whose event runs the pruned
YOLOS and sends only what a slider changes. The server stays the source of truth for every other event. The
``gradio_client`` endpoints are :mod:`bavit.app.endpoints`'.

Event order: the control events share one Gradio concurrency group (:data:`~bavit.app.handlers.CONTROL_EVENTS`), so
the queue starts them in arrival order; per session, :meth:`Explorer.update` runs them one at a time and skips an
event once a newer one is waiting.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import gradio as gr

from ..pruning.settings import DEFAULT_CCA_STEPS, DEFAULT_SPARSITY, DEFAULT_THRESHOLD, MAX_CCA_STEPS, MAX_SPARSITY
from . import client, panels, server, uploads, viz
from .endpoints import add_endpoints
from .explorer import Explorer
from .handlers import CONTROL_EVENTS, PAGE_KEYS, SLIDER_KEYS, build_handlers
from .session import TARGET_MODES, default_mode, modes

IMAGE_HEIGHT = 340  # px: output images are scaled to fit, so portrait photos do not stretch the page
MODE_INFO = ("Mean sparsity: one calibrated threshold for all images, so each image's sparsity follows its content "
             "(paper Table 2). Top-k: this image held at the target.")
MODE_INFO_UNCALIBRATED = ("Top-k: this image held at the target sparsity. (This checkpoint has no calibration, so a "
                          "mean sparsity over images cannot be set.)")
CSS = """
#banner {background: #fff3cd; border: 1px solid #e0b100; border-radius: 6px; padding: 4px 12px;}
#tokens table {font-variant-numeric: tabular-nums;}
"""


def example_images(directory: Path = uploads.EXAMPLES_DIR) -> list[str]:
    """The gallery's images (``assets/examples/*.jpg|png``), sorted by name."""
    return sorted(str(p) for p in directory.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))


def build_demo(explorer: Explorer, examples: list[str] | None = None, coco_examples: list[str] | None = None) -> gr.Blocks:
    """Lay out the page around ``explorer`` (shared by all sessions; per-session data lives in ``gr.State``)."""
    with warnings.catch_warnings():  # Gradio 5 API that Gradio 6 renames (css, show_api, api_name=False)
        warnings.filterwarnings("ignore", message=".*Gradio 6", category=DeprecationWarning)
        return _build_demo(explorer, examples, coco_examples)


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
            f"A {explorer.predictor.bavit.config.depth}-layer ViT (**BAViT**) labels each 16x16 patch foreground or "
            f"background at {explorer.predictor.bavit.config.img_size} px; **YOLOS** then runs "
            "only on the foreground patches at 512 px. Raise the sparsity (or the threshold): fewer kept patches, fewer "
            "tokens, faster detection, and you see what gets lost."
        )
        gr.Markdown(panels.banner_text(explorer.predictor), elem_id="banner", visible=not ready)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image = gr.Image(label="Input image", type="filepath", elem_id="input-image", sources=["upload", "clipboard"],
                                 height=320)
                # The calibrated mode only with a calibration; the default is the paper's setting when there is one.
                default = default_mode(explorer.predictor)
                target_mode = default in TARGET_MODES
                calibrated = explorer.predictor.calibration is not None
                mode = gr.Radio(modes(explorer.predictor), value=default, label="Sparsity control", elem_id="mode",
                                info=MODE_INFO if calibrated else MODE_INFO_UNCALIBRATED)
                threshold = gr.Slider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="FG-probability threshold (patches above it are kept)",
                                      elem_id="threshold", visible=not target_mode)
                target = gr.Slider(0, round(100 * MAX_SPARSITY), value=round(100 * DEFAULT_SPARSITY), step=1, label="Target sparsity (% of YOLOS patches pruned)",
                                   elem_id="target-sparsity", visible=target_mode)
                cca_steps = gr.Slider(0, MAX_CCA_STEPS, value=DEFAULT_CCA_STEPS, step=1, label="CCA steps (grow FG into cells with >= 3 FG neighbours)",
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
            det_message = gr.Markdown(panels.detections_text(explorer.predictor), elem_id="detections-message")
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
                editor.blob_storage = server.BoundedBlobs()  # see there: a client could fill it without bound
                gt_apply = gr.Button("Compare with painted GT", elem_id="gt-apply")
        with gr.Row(elem_classes=["bavit-hidden"]):  # the page's wiring to static/grid.js (rendered, not shown)
            page_state = gr.Textbox(elem_id="page-state", label="page state (JSON for grid.js)", max_lines=1)
            server_update = gr.Button("server update", elem_id="server-update")  # grid.js clicks these two
            curve_request = gr.Button("curve request", elem_id="curve-request")
        control_inputs = [mode, threshold, target, cca_steps, detect, show_dense]
        shown = {"det_pruned": det_pruned, "det_dense": det_dense, "det_message": det_message, "sparsity": sparsity,
                 "tokens": tokens, "latency": latency, "gt_confusion": gt_confusion, "gt_stats": gt_stats}
        page_outputs = [page_state, *(shown[key] for key in PAGE_KEYS)]
        slider_outputs = [page_state, *(shown[key] for key in SLIDER_KEYS)]
        image.change(handlers.page_image, [image, session_state, *control_inputs],
                     [session_state, *page_outputs, gt_grid, editor], preprocess=False, api_name="page_image",
                     show_api=False, trigger_mode="always_last")
        # A slider runs static/grid.js only (no Python function): it answers grid-only moves in the page, else it
        # clicks #server-update, whose event reads the same controls.
        for control in (threshold, target, cca_steps):
            control.input(None, [*control_inputs, sparsity, tokens], [sparsity, tokens], api_name=False,
                          show_progress="hidden", js="(...values) => window.bavitGrid.slider(...values)")
        server_update.click(handlers.page_slider, [session_state, *control_inputs], slider_outputs,
                            api_name="page_slider", show_api=False, show_progress="hidden", **CONTROL_EVENTS)
        for name, control in (("page_detect", detect), ("page_show_dense", show_dense)):
            control.input(handlers.page_controls, [session_state, *control_inputs], page_outputs, api_name=name,
                          show_api=False, **CONTROL_EVENTS)
        mode.input(handlers.page_mode, [session_state, *control_inputs], [threshold, target, *page_outputs],
                   api_name="page_mode", show_api=False, **CONTROL_EVENTS)
        # Cheap and order-free (one CCA setting's base plot, drawn once per image): off the queue, which polls every
        # 50 ms. The session stays safe: page_curve holds the session's gate like every other event.
        curve_request.click(handlers.page_curve, [session_state, cca_steps], page_state, api_name="page_curve",
                            show_api=False, show_progress="hidden", queue=False, preprocess=False)
        page_state.change(None, page_state, None, js="(text) => window.bavitGrid.receive(text)")
        # Raw values (preprocess=False): the editor's layers arrive as uploaded files, read under the upload limits
        # (Gradio would decode every layer into an array first, with no limit).
        gt_apply.click(handlers.page_paint, [session_state, editor, *control_inputs],
                       [gt_grid, gt_confusion, gt_stats, page_state], api_name="page_paint", show_api=False,
                       preprocess=False)
        add_endpoints(explorer, handlers, session_state, control_inputs, shown, [gt_grid, editor])
    return demo


def _figures(*figures: tuple[str, str]) -> str:
    """HTML of captioned canvases that static/draw.js draws (``(elem_id, caption)`` each)."""
    return '<div class="bavit-figures">' + "".join(
        f'<div class="bavit-figure" id="{elem_id}"><div class="bavit-caption">{caption}</div><canvas></canvas>'
        '<div class="bavit-placeholder">Load an image to see it here.</div></div>' for elem_id, caption in figures
    ) + "</div>"
