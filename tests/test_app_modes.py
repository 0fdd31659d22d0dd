"""The three sparsity controls of the app: FG-probability threshold, calibrated mean sparsity over images (paper
Table 2: one threshold from the checkpoint's calibration, each image's own sparsity follows its content) and this
image's sparsity held at the target by top-k. In-process through the Explorer and the page's handlers, and through
the ``analyze`` API and the page's events on the shared app server (a random BAViT calibrated on the gallery images)."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
import torch

pytest.importorskip("gradio_client")
import apphelpers  # noqa: E402
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from bavit.pruning.settings import PruningSettings
from bavit.app.explorer import Explorer  # noqa: E402
from bavit.app.ui import OUTPUT_KEYS, build_handlers  # noqa: E402
from bavit.app.session import (  # noqa: E402
    MODE_SPARSITY,
    MODE_THRESHOLD,
    MODE_TOPK,
    Controls,
    effective_threshold,
)
from bavit.app.ui import build_demo  # noqa: E402
from bavit.errors import BAViTError  # noqa: E402
from bavit.predictor import Predictor  # noqa: E402
from bavit.pruning.keep_mask import keep_mask_from_probs, top_k_for_kept  # noqa: E402

CHELSEA = apphelpers.EXAMPLES / "chelsea.jpg"
ROCKET = apphelpers.EXAMPLES / "rocket.jpg"
EVENT_SPARSITY = 1 + OUTPUT_KEYS.index("sparsity")  # page_image (through a client) and page_controls: the page state, OUTPUT_KEYS
MODE_EVENT_SPARSITY = 3 + OUTPUT_KEYS.index("sparsity")  # page_mode: two slider visibilities, the page state, OUTPUT_KEYS


@pytest.fixture(scope="module")
def calibrated():
    """An Explorer on a calibrated random BAViT (no detector: grid-only, quick)."""
    explorer = Explorer(Predictor(bavit=apphelpers.calibrated_bavit_checkpoint(), detector=None))
    assert explorer.predictor.calibration is not None
    return explorer


@pytest.fixture(scope="module")
def uncalibrated():
    explorer = Explorer(Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=None))
    assert explorer.predictor.calibration is None
    return explorer


def open_image(explorer: Explorer, path):
    return explorer.open_image({"path": str(path), "orig_name": path.name})


def own_sparsity(analysis) -> float:
    return 100.0 * analysis.accounting.sparsity


@pytest.mark.parametrize("cca_steps", [0, 3])
def test_calibrated_mode_uses_the_calibrated_threshold(calibrated, cca_steps):
    calibration = calibrated.predictor.calibration
    session = open_image(calibrated, CHELSEA)
    controls = Controls(mode=MODE_SPARSITY, target_sparsity=35, cca_steps=cca_steps, detect=False)
    view = calibrated.update(session, controls)
    analysis = view["analysis"]
    threshold = calibration.threshold(0.35, cca_steps)
    assert analysis.threshold == threshold and analysis.settings == PruningSettings(sparsity=0.35, cca_steps=cca_steps)
    assert analysis.keep_ratio is None
    # the same grids as that one threshold applied by hand
    reference = calibrated.predictor.predict(session.prepared, PruningSettings(threshold=threshold, cca_steps=cca_steps), detect=False)
    np.testing.assert_array_equal(analysis.keep_mask, reference.keep_mask)
    # the panel: the target mean, the calibrated threshold, where it was calibrated, and this image's own sparsity
    text = view["sparsity"]
    own = own_sparsity(analysis)
    assert text.startswith(f"### Sparsity: {own:.1f}%")
    assert "Mean sparsity 35% over images" in text and f"threshold {threshold:.2f}" in text
    assert f"calibrated on {len(apphelpers.CALIBRATION_IMAGES)} images: {apphelpers.CALIBRATION_SOURCE}" in text
    assert f"this image: {own:.1f}%" in text
    assert f"{int(analysis.accounting.kept_patches)} kept" in text
    # the curve's marker sits at the threshold used
    assert effective_threshold(analysis) == threshold


def test_calibrated_mean_over_the_calibration_images(calibrated):
    """On the images it was calibrated on, the images' own sparsities average to the target (within 1 point),
    while each image's sparsity follows its content."""
    sessions = [open_image(calibrated, path) for path in apphelpers.CALIBRATION_IMAGES]
    for target in (20, 35, 50):
        for cca_steps in (0, 3):
            controls = Controls(mode=MODE_SPARSITY, target_sparsity=target, cca_steps=cca_steps, detect=False)
            own = [own_sparsity(calibrated.analyze(session, controls)) for session in sessions]
            assert np.mean(own) == pytest.approx(target, abs=1.0), (target, cca_steps, own)
            assert max(own) - min(own) > 1.0, own  # not every image at the target: one threshold for all


@pytest.mark.parametrize("path, target, cca_steps", [(ROCKET, 35, 3), (ROCKET, 60, 0), (CHELSEA, 35, 3)])
def test_topk_mode_holds_this_image_at_the_target(calibrated, path, target, cca_steps):
    predictor = calibrated.predictor
    grid = predictor.yolos_grid
    session = open_image(calibrated, path)
    controls = Controls(mode=MODE_TOPK, target_sparsity=target, cca_steps=cca_steps, detect=False)
    view = calibrated.update(session, controls)
    analysis = view["analysis"]
    probs = torch.from_numpy(np.array(session.prepared.fg_prob))
    goal = round(grid * grid * (1 - target / 100))
    k = top_k_for_kept(probs, goal, grid, cca_steps, predictor.resample_mode)
    assert analysis.settings == PruningSettings(image_sparsity=target / 100, cca_steps=cca_steps)
    assert analysis.threshold is None and analysis.keep_ratio == k / probs.numel()
    kept = int(analysis.accounting.kept_patches)

    def count(k: int) -> int:
        return int(keep_mask_from_probs(probs, PruningSettings(keep_ratio=k / probs.numel(), cca_steps=cca_steps),
                                        grid=grid, resample=predictor.resample_mode).keep_mask.sum())

    # kept counts rise with k, so the closest reachable count is next to the chosen k
    assert kept == count(k)
    window = [count(j) for j in range(max(1, k - 3), min(probs.numel(), k + 3) + 1)]
    assert window == sorted(window)
    assert abs(kept - goal) == min(abs(c - goal) for c in window)
    # the panel: this image held at the target, its own sparsity shown
    text = view["sparsity"]
    own = own_sparsity(analysis)
    assert text.startswith(f"### Sparsity: {own:.1f}%")
    assert f"held at the target {target}%" in text and f"this image: {own:.1f}%" in text
    assert f"top {k} BAViT tokens" in text and f"{kept} kept" in text
    # the curve's marker: the k-th highest FG probability
    kth = float(np.sort(session.prepared.fg_prob.ravel())[::-1][k - 1])
    assert effective_threshold(analysis) == kth


def test_controls_give_one_setting_per_mode():
    assert Controls(mode=MODE_THRESHOLD, threshold=0.3, cca_steps=2).settings == PruningSettings(threshold=0.3, cca_steps=2)
    assert Controls(mode=MODE_SPARSITY, target_sparsity=40).settings == PruningSettings(sparsity=0.4)
    assert Controls(mode=MODE_TOPK, target_sparsity="40").settings == PruningSettings(image_sparsity=0.4)
    with pytest.raises(BAViTError, match="unknown sparsity control"):
        Controls(mode="Target sparsity")
    with pytest.raises(BAViTError, match="percentage"):
        Controls(mode=MODE_TOPK, target_sparsity=120)
    with pytest.raises(BAViTError, match="threshold"):  # the hidden slider's value is checked too
        Controls(mode=MODE_TOPK, threshold=2)


def radio_and_sliders(demo: gr.Blocks):
    by_id = {getattr(block, "elem_id", None): block for block in demo.blocks.values()}
    return by_id["mode"], by_id["threshold"], by_id["target-sparsity"]


def test_radio_offers_the_calibrated_mode_only_with_a_calibration(calibrated, uncalibrated):
    radio, threshold, target = radio_and_sliders(build_demo(calibrated, examples=[]))
    assert [value for _, value in radio.choices] == [MODE_THRESHOLD, MODE_SPARSITY, MODE_TOPK]
    assert radio.value == MODE_SPARSITY  # the paper's setting by default
    assert target.visible and not threshold.visible
    assert "YOLOS patches pruned" in target.label

    radio, threshold, target = radio_and_sliders(build_demo(uncalibrated, examples=[]))
    assert [value for _, value in radio.choices] == [MODE_THRESHOLD, MODE_TOPK]
    assert radio.value == MODE_THRESHOLD
    assert threshold.visible and not target.visible


def test_calibrated_mode_without_a_calibration_is_a_clear_error(uncalibrated):
    """A client that sends the calibrated mode anyway gets a gr.Error that says why; the session still works."""
    handlers = build_handlers(uncalibrated)
    session = open_image(uncalibrated, CHELSEA)
    controls = (MODE_SPARSITY, 0.5, 35, 3, False, False)
    with pytest.raises(gr.Error, match="needs a calibrated BAViT checkpoint"):
        handlers.page_controls(session, *controls)
    with pytest.raises(gr.Error, match="needs a calibrated BAViT checkpoint"):
        handlers.page_mode(session, *controls)
    with pytest.raises(gr.Error, match="needs a calibrated BAViT checkpoint"):
        handlers.page_image({"path": str(ROCKET), "orig_name": "rocket.jpg"}, None, *controls)
    with pytest.raises(BAViTError, match="calibrat"):
        uncalibrated.api_result({"path": str(ROCKET)}, sparsity=0.35, detect=False)
    # the other modes still answer for this session
    shown = handlers.page_mode(session, MODE_TOPK, 0.5, 35, 3, False, False)
    assert shown[0]["visible"] is False and shown[1]["visible"] is True
    assert "held at the target 35%" in shown[MODE_EVENT_SPARSITY]
    assert "threshold 0.40" in handlers.page_controls(session, MODE_THRESHOLD, 0.4, 35, 3, False, False)[EVENT_SPARSITY]


def test_mode_event_sets_the_sliders(calibrated):
    handlers = build_handlers(calibrated)
    session = open_image(calibrated, ROCKET)
    for mode, target_visible, phrase in ((MODE_SPARSITY, True, "Mean sparsity 45% over images"),
                                         (MODE_TOPK, True, "held at the target 45%"),
                                         (MODE_THRESHOLD, False, "threshold 0.50")):
        outputs = handlers.page_mode(session, mode, 0.5, 45, 3, False, False)
        assert outputs[0]["visible"] is (not target_visible) and outputs[1]["visible"] is target_visible
        assert phrase in outputs[MODE_EVENT_SPARSITY]


# ---------------------------------------------------------------------------------------- through the server
@pytest.fixture(scope="module")
def local_calibrated():
    """The server's checkpoint in-process: the reference for its numbers."""
    return Predictor(bavit=apphelpers.calibrated_bavit_checkpoint(), detector=None)


def test_analyze_endpoint_sparsity_input(client, local_calibrated):
    calibration = local_calibrated.calibration
    result = client.predict(handle_file(str(ROCKET)), 0.5, 3, 0, 0.35, api_name="/analyze")
    assert result["target_sparsity"] == 0.35 and result["keep_ratio"] is None
    assert result["threshold"] == pytest.approx(calibration.threshold(0.35, 3))
    expected = local_calibrated.analyze(str(ROCKET), PruningSettings(sparsity=0.35, cca_steps=3), detect=False)
    assert result["kept_patches"] == int(expected.keep_mask.sum())
    assert result["sparsity"] == pytest.approx(expected.accounting.sparsity)
    # 0 (and leaving it out) is the threshold mode, as before
    plain = client.predict(handle_file(str(ROCKET)), 0.5, 3, 0, 0, api_name="/analyze")
    assert plain["target_sparsity"] is None and plain["threshold"] == 0.5
    assert client.predict(handle_file(str(ROCKET)), 0.5, 3, 0, api_name="/analyze")["kept_patches"] == plain["kept_patches"]


@pytest.mark.parametrize("keep_ratio, sparsity, message", [
    (0, 35, r"sparsity is the target mean sparsity as a fraction in \[0, 1\) \(0.35 for 35%\), got 35"),  # a percentage
    (0, -0.2, r"fraction in \[0, 1\)"),
    (0, 0.99, r"sparsity must lie in this checkpoint's calibrated range \[0, 0.95\]"),  # beyond the calibrated levels
    (0.5, 0.35, "not both"),
])
def test_analyze_endpoint_refuses_bad_sparsity(client, server, keep_ratio, sparsity, message):
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(ROCKET)), 0.5, 3, keep_ratio, sparsity, api_name="/analyze")
    assert server.alive()


def test_page_modes_through_the_server(client, server, local_calibrated):
    """The page's image and mode events in the calibrated and top-k modes, as the page sends them."""
    outputs = client.predict(handle_file(str(CHELSEA)), MODE_SPARSITY, 0.5, 35, 3, False, False, api_name="/page_image")
    expected = local_calibrated.analyze(str(CHELSEA), PruningSettings(sparsity=0.35, cca_steps=3), detect=False)
    own = 100.0 * expected.accounting.sparsity
    text = outputs[EVENT_SPARSITY]
    assert "Mean sparsity 35% over images" in text and f"this image: {own:.1f}%" in text
    moved = client.predict(MODE_TOPK, 0.5, 50, 3, False, False, api_name="/page_mode")
    assert "held at the target 50%" in moved[MODE_EVENT_SPARSITY]
    with pytest.raises(AppError, match="unknown sparsity control"):
        client.predict(handle_file(str(CHELSEA)), "Target sparsity", 0.5, 35, 3, False, False, api_name="/page_image")
    assert server.alive()
