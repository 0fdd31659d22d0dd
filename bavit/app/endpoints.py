"""The app's ``gradio_client`` API: hidden components and the events behind ``load_image``, ``set_threshold`` and
``analyze`` (:func:`add_endpoints`, called inside the page's ``gr.Blocks``).

``load_image(image, *controls)`` and ``set_threshold(*controls)`` answer with the grid and curve images, in
:data:`~bavit.app.handlers.VIEW_KEYS` order (the tests and ``app-bench`` call them; kept off the API page);
``analyze(image, threshold, cca_steps, keep_ratio, sparsity)`` answers with :func:`bavit.app.api.result`'s dict.
``gr.State`` inputs and outputs are not part of an endpoint's signature.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..pruning.settings import DEFAULT_CCA_STEPS, DEFAULT_THRESHOLD
from .explorer import Explorer
from .handlers import CONTROL_EVENTS, VIEW_KEYS, Handlers, user_errors


def add_endpoints(explorer: Explorer, handlers: Handlers, session_state: gr.State, control_inputs: list[Any],
                  shown: dict[str, Any], gt_outputs: list[Any]) -> None:
    """Add the endpoints' hidden components and events to the page being built.

    Args:
        explorer, handlers: the page's (``load_image`` and ``set_threshold`` run its ``on_image`` / ``on_controls``).
        control_inputs: the page's ``mode, threshold, target, cca_steps, detect, show_dense`` components.
        shown: the page's components the endpoints answer in too, by view key (every key of
            :data:`~bavit.app.handlers.VIEW_KEYS` but the grids and the curve, which the page draws itself).
        gt_outputs: the page's GT grid image and GT editor.
    """
    with gr.Row(visible=False):
        load_input = gr.Image(type="filepath", label="image")
        grid_raw = gr.Image(label="BAViT patch grid (before CCA)", format="jpeg")
        grid_cca = gr.Image(label="After CCA", format="jpeg")
        curve = gr.Image(label="sparsity and speed-up vs threshold", format="jpeg")
        load = gr.Button("load_image")
        set_threshold = gr.Button("set_threshold")
        image = gr.Image(type="filepath", label="image")
        threshold = gr.Number(value=DEFAULT_THRESHOLD, label="threshold")
        cca = gr.Number(value=DEFAULT_CCA_STEPS, precision=0, label="cca_steps")
        keep = gr.Number(value=0, label="keep_ratio (0 = off)")
        sparsity = gr.Number(value=0, label="sparsity (target mean over images, a fraction; calibrated checkpoints; "
                                            "0 = off)")
        result = gr.JSON(label="result")
        analyze = gr.Button("analyze")
    by_key = {"grid_raw": grid_raw, "grid_cca": grid_cca, "curve": curve, **shown}
    view_outputs = [by_key[key] for key in VIEW_KEYS]
    load.click(handlers.on_image, [load_input, session_state, *control_inputs],
               [session_state, *view_outputs, *gt_outputs], preprocess=False, api_name="load_image", show_api=False,
               trigger_mode="always_last")
    set_threshold.click(handlers.on_controls, [session_state, *control_inputs], view_outputs, api_name="set_threshold",
                        show_api=False, show_progress="hidden", **CONTROL_EVENTS)

    @user_errors
    def on_api(payload: Any, threshold: Any, cca_steps: Any, keep_ratio: Any, sparsity: Any = None) -> dict[str, Any]:
        if payload is None:
            raise gr.Error("no image given", print_exception=False)
        return explorer.api_result(payload, threshold=threshold, cca_steps=cca_steps, keep_ratio=keep_ratio,
                                   sparsity=sparsity)

    analyze.click(on_api, [image, threshold, cca, keep, sparsity], result, api_name="analyze", preprocess=False)
