"""The page's server events (bavit/app/ui.py page_* handlers) and the messages they send to static/grid.js
(bavit/app/page.py), called like Gradio's workers do, without a browser."""
from __future__ import annotations

import base64
import json

import apphelpers
import gradio as gr
import numpy as np
import pytest
import torch

from bavit.pruning.settings import PruningSettings
from bavit.app import page
from bavit.app.explorer import Explorer
from bavit.app.ui import PAGE_KEYS, SLIDER_KEYS, build_handlers
from bavit.app.session import MODE_SPARSITY, MODE_THRESHOLD, MODE_TOPK, Controls, effective_threshold
from bavit.predictor import Predictor
from bavit.pruning.accounting import token_accounting
from bavit.pruning.keep_mask import keep_mask_from_probs

CHELSEA = apphelpers.EXAMPLES / "chelsea.jpg"
SKIP = gr.skip()


@pytest.fixture(scope="module")
def explorer():
    return Explorer(Predictor(bavit=apphelpers.calibrated_bavit_checkpoint(), detector=None))


@pytest.fixture(scope="module")
def handlers(explorer):
    return build_handlers(explorer)


def load(handlers, controls=(MODE_SPARSITY, 0.5, 35, 3, False, False)):
    outputs = handlers.page_image({"path": str(CHELSEA), "orig_name": "chelsea.jpg"}, None, *controls)
    return outputs[0], json.loads(outputs[1]), outputs


def bits(grid) -> str:
    return "".join("1" if v else "0" for v in np.asarray(grid, dtype=bool).ravel())


def test_image_message_carries_what_the_page_needs(explorer, handlers):
    session, message, outputs = load(handlers)
    assert len(outputs) == 2 + len(PAGE_KEYS) + 3  # session, page_state, page outputs, gt_grid, editor, timer
    assert message["kind"] == "image"
    payload = message["payload"]
    probs = np.frombuffer(base64.b64decode(payload["probs"]), dtype="<f4").reshape(24, 24)
    np.testing.assert_array_equal(probs, session.prepared.fg_prob)  # bit-exact float32
    assert payload["key"] == session.prepared.key and (payload["side"], payload["yolos_grid"]) == (24, 32)
    assert payload["image"].startswith("data:image/jpeg;base64,")
    assert (payload["width"], payload["height"]) == session.display.size
    calibration = explorer.predictor.calibration
    assert payload["calibration"]["levels"] == list(calibration.levels)
    assert payload["calibration"]["thresholds"]["3"] == list(calibration.thresholds[3])
    macs = payload["accounting"]["pipeline_macs"]
    assert len(macs) == 1025
    for kept in (0, 1, 500, 1024):
        assert macs[kept] == token_accounting(kept, explorer.predictor.yolos_config,
                                              explorer.predictor.bavit.config).pipeline_macs
    # the server's view of the image: the Predictor's grids at the calibrated threshold
    expected = explorer.predictor.predict(session.prepared, PruningSettings(sparsity=0.35, cca_steps=3), detect=False)
    view = message["view"]
    assert (view["raw"], view["cca"], view["kept"]) == (bits(expected.grid_raw), bits(expected.grid_cca),
                                                       int(expected.keep_mask.sum()))
    assert view["gt"] is False and view["key"] == session.prepared.key
    assert view["curve"]["point"]["threshold"] == pytest.approx(calibration.threshold(0.35, 3))
    assert message["curve"]["cca"] == 3 and message["curve"]["base"].startswith("data:image/png;base64,")


def test_slider_event_sends_only_what_changes(explorer, handlers):
    session, _, _ = load(handlers)
    first = handlers.page_slider(session, MODE_THRESHOLD, 0.4, 35, 2, True, False)
    second = handlers.page_slider(session, MODE_THRESHOLD, 0.4, 35, 2, True, False)
    assert len(first) == 1 + len(SLIDER_KEYS) + 1 and "det_dense" not in SLIDER_KEYS  # page_state, panels, timer
    outputs = dict(zip(("page_state", *SLIDER_KEYS), first))
    # no detector weights and no GT: the detection and GT panels cannot change, so they are not sent
    assert all(outputs[key] == SKIP for key in ("det_pruned", "det_message", "gt_confusion", "gt_stats"))
    assert "threshold 0.40" in outputs["sparsity"] and "YOLOS pruned" in outputs["tokens"]
    view = json.loads(outputs["page_state"])
    expected = keep_mask_from_probs(torch.from_numpy(np.array(session.prepared.fg_prob)), PruningSettings(threshold=0.4, cca_steps=2))
    assert (view["raw"], view["cca"], view["kept"]) == (bits(expected.grid_raw), bits(expected.grid_cca),
                                                       int(expected.kept_patches))
    assert json.loads(second[0])["nonce"] != view["nonce"]  # the same view again is still a change for the page

    # top-k: the page's messages carry the curve's x (the k-th highest probability)
    view = json.loads(handlers.page_slider(session, MODE_TOPK, 0.5, 60, 3, False, False)[0])
    analysis = explorer.analyze(session, Controls(mode=MODE_TOPK, target_sparsity=60, detect=False))
    kth = np.sort(analysis.fg_prob.ravel())[::-1][int(analysis.grid_raw.sum()) - 1]
    assert view["curve"]["point"]["threshold"] == pytest.approx(effective_threshold(analysis)) == pytest.approx(kth)
    # no image yet: nothing to send
    assert handlers.page_slider(None, MODE_THRESHOLD, 0.4, 35, 2, True, False) == [SKIP] * (2 + len(SLIDER_KEYS))


def test_curve_request(explorer, handlers):
    session, _, _ = load(handlers)
    message = json.loads(handlers.page_curve(session, 1))
    assert (message["kind"], message["cca"], message["key"]) == ("curve", 1, session.prepared.key)
    assert 1 in session.plots  # drawn once, kept for the next render
    height, width = session.plots[1].base.shape[:2]
    assert (message["width"], message["height"]) == (width, height)
    np.testing.assert_allclose(message["left"], session.plots[1].left)
    assert handlers.page_curve(None, 1) == SKIP
    for bad in (-1, 11, "x"):
        with pytest.raises(gr.Error, match="cca_steps (is a whole number in 0..5|must be a number)"):
            handlers.page_curve(session, bad)


def test_clearing_sends_a_clear_message(handlers):
    session, _, _ = load(handlers)
    tickets = session.gate.issued
    outputs = handlers.page_image(None, session, MODE_SPARSITY, 0.5, 35, 3, False, False)
    assert outputs[0] is None and json.loads(outputs[1])["kind"] == "clear"
    assert session.gate.issued == tickets + 1 and session.gate.superseded(tickets - 1)  # the old session was retired


def test_head_loads_the_static_files():
    head = page.head_html()
    assert head.count("<script>") == 1 and "window.bavitGrid" in head and ".bavit-hidden" in head
