"""The page's server events (bavit/app/ui.py page_* handlers) and the messages they send to static/grid.js
(bavit/app/page.py), called like Gradio's workers do, without a browser."""
from __future__ import annotations

import json

import apphelpers
import gradio as gr
import numpy as np
import pytest
import torch

from bavit.pruning.settings import PruningSettings
from bavit.app import page
from bavit.app.explorer import Explorer
from bavit.app.ui import OUTPUT_KEYS, SLIDER_KEYS, SLIDER_OUTPUT_KEYS, build_handlers
from bavit.app.session import MODE_SPARSITY, MODE_THRESHOLD, MODE_TOPK, Controls, effective_threshold
from bavit.predictor import Predictor
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


def unhex(text: str, cells: int) -> str:
    """page.grid_hex back to 0/1 characters."""
    return "".join(format(int(digit, 16), "04b") for digit in text)[:cells]


def test_image_message_carries_what_the_page_needs(explorer, handlers):
    session, message, outputs = load(handlers)
    assert len(outputs) == 2 + len(OUTPUT_KEYS) + 3  # session, page_state, page outputs, gt_grid, editor, timer
    assert message["kind"] == "image"
    payload = message["payload"]
    assert payload["key"] == session.prepared.key and payload["side"] == 24 and payload["detector"] is False
    assert payload["image"].startswith("data:image/jpeg;base64,")
    assert (payload["width"], payload["height"]) == session.display.size
    calibration = explorer.predictor.calibration
    # the server's view of the image: the Predictor's grids at the calibrated threshold
    expected = explorer.predictor.predict(session.prepared, PruningSettings(sparsity=0.35, cca_steps=3), detect=False)
    view = message["view"]
    cells = expected.grid_raw.size  # the grids travel as hex, as the ladder's (page.grid_hex)
    assert (unhex(view["raw"], cells), unhex(view["cca"], cells), view["kept"]) == (
        bits(expected.grid_raw), bits(expected.grid_cca), int(expected.keep_mask.sum()))
    assert view["gt"] is False and view["key"] == session.prepared.key
    assert view["curve"]["point"]["threshold"] == pytest.approx(calibration.threshold(0.35, 3))
    assert message["curve"]["cca"] == 3 and message["curve"]["base"].startswith("data:image/png;base64,")
    assert view["job"] is None  # no detector: no detection ladder


def test_the_ladder_holds_pythons_answer_at_every_slider_position(explorer, handlers):
    """The grid ladder the page answers slider moves from: at each position the Predictor's grids and kept count,
    the page's own sparsity text and token table and the curve's point, exactly; positions the Predictor refuses
    (outside the calibration) are left to the server."""
    session, message, _ = load(handlers)
    ladder = message["view"]["ladder"]
    assert (ladder["mode"], ladder["cca"], ladder["slider"]) == (MODE_SPARSITY, 3, "target")
    assert ladder["values"] == [float(v) for v in range(96)]
    calibration = explorer.predictor.calibration
    checked = 0
    for value, rung in zip(ladder["values"], ladder["rungs"]):
        controls = Controls(mode=MODE_SPARSITY, target_sparsity=value, cca_steps=3, detect=False)
        inside = calibration.levels[0] <= value / 100 <= calibration.levels[-1] + 1e-9
        assert (rung is not None) == inside, value
        if rung is None:
            continue
        analysis = explorer.analyze(session, controls)
        raw, mask, kept, x, percent, sparsity, tokens = rung
        assert unhex(ladder["grids"][raw], 576) == bits(analysis.grid_raw)
        assert unhex(ladder["grids"][mask], 576) == bits(analysis.grid_cca)
        assert kept == int(analysis.keep_mask.sum())
        assert x == effective_threshold(analysis) and percent == 100.0 * float(analysis.accounting.sparsity)
        assert ladder["texts"][sparsity] == page.sparsity_text(analysis, controls, calibration)
        assert ladder["texts"][tokens] == page.tokens_table(analysis)
        checked += 1
    assert checked > 50 and len(ladder["grids"]) < 2 * checked  # equal grids are sent once

    # a new CCA setting's event brings its ladder; other events leave it out (the page has it), but a grid-only
    # slider answer brings it again: without the detector the page asks only when it lacks it
    first = json.loads(handlers.page_controls(session, MODE_THRESHOLD, 0.4, 35, 1, False, False)[0])
    again = json.loads(handlers.page_controls(session, MODE_THRESHOLD, 0.41, 35, 1, False, False)[0])
    asked = json.loads(handlers.page_slider(session, MODE_THRESHOLD, 0.42, 35, 1, False, False)[0])
    assert first["ladder"]["values"] == [round(i * 0.01, 2) for i in range(101)] and first["ladder"]["cca"] == 1
    assert "ladder" not in again and asked["ladder"] == first["ladder"]
    top = first["ladder"]["rungs"][100]  # threshold 1.0: nothing above it but the top cell of the rule's >=
    expected = explorer.analyze(session, Controls(mode=MODE_THRESHOLD, threshold=1.0, cca_steps=1, detect=False))
    assert top[2] == int(expected.keep_mask.sum())


def test_grid_hex_round_trips():
    rng = np.random.default_rng(0)
    for side in (16, 24, 5):
        grid = rng.random((side, side)) > 0.5
        assert unhex(page.grid_hex(grid), side * side) == bits(grid)
    assert page.grid_hex(np.array([[1, 0, 0, 0], [0, 0, 0, 1]], dtype=bool)) == "81"


def test_slider_event_sends_only_what_changes(explorer, handlers):
    session, _, _ = load(handlers)
    first = handlers.page_slider(session, MODE_THRESHOLD, 0.4, 35, 2, True, False)
    second = handlers.page_slider(session, MODE_THRESHOLD, 0.4, 35, 2, True, False)
    assert len(first) == 1 + len(SLIDER_OUTPUT_KEYS) + 1 and "det_dense" not in SLIDER_KEYS  # page_state, GT, timer
    outputs = dict(zip(("page_state", *SLIDER_OUTPUT_KEYS), first))
    # no GT: its panels cannot change, so they are not sent
    assert all(outputs[key] == SKIP for key in ("gt_confusion", "gt_stats"))
    view = json.loads(outputs["page_state"])
    # the texts travel with the grids; no detector weights: the detection message cannot change, so it is not sent
    assert set(view["texts"]) == {"sparsity", "tokens", "latency"} and view["slider"] is True
    assert "threshold 0.40" in view["texts"]["sparsity"] and "YOLOS pruned" in view["texts"]["tokens"]
    assert view["controls"] == {"mode": MODE_THRESHOLD, "threshold": 0.4, "target": 35.0, "cca": 2, "detect": True,
                                "dense": False}
    expected = keep_mask_from_probs(torch.from_numpy(np.array(session.prepared.fg_prob)), PruningSettings(threshold=0.4, cca_steps=2))
    cells = expected.grid_raw.numel()
    assert (unhex(view["raw"], cells), unhex(view["cca"], cells), view["kept"]) == (
        bits(expected.grid_raw), bits(expected.grid_cca), int(expected.kept_patches))
    assert json.loads(second[0])["nonce"] != view["nonce"]  # the same view again is still a change for the page

    # top-k: the page's messages carry the curve's x (the k-th highest probability)
    view = json.loads(handlers.page_slider(session, MODE_TOPK, 0.5, 60, 3, False, False)[0])
    analysis = explorer.analyze(session, Controls(mode=MODE_TOPK, target_sparsity=60, detect=False))
    kth = np.sort(analysis.fg_prob.ravel())[::-1][int(analysis.grid_raw.sum()) - 1]
    assert view["curve"]["point"]["threshold"] == pytest.approx(effective_threshold(analysis)) == pytest.approx(kth)
    # no image yet: nothing to send
    assert handlers.page_slider(None, MODE_THRESHOLD, 0.4, 35, 2, True, False) == [SKIP] * (2 + len(SLIDER_OUTPUT_KEYS))


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
