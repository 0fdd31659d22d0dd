"""The app as an API: gradio_client against a real `python app.py` server (random BAViT, no detector weights),
plus the detector-present path in-process with a tiny random YOLOS saved via save_pretrained."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("gradio_client")
import apphelpers  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

from bavit.pruning.settings import PruningSettings
from bavit.app.explorer import Explorer, pruning_cost  # noqa: E402
from bavit.app.page import banner_text  # noqa: E402
from bavit.app.session import MODE_THRESHOLD, MODE_TOPK, Controls  # noqa: E402
from bavit.app.ui import build_demo  # noqa: E402
from bavit.predictor import Predictor  # noqa: E402

CHELSEA = apphelpers.EXAMPLES / "chelsea.jpg"
ROCKET = apphelpers.EXAMPLES / "rocket.jpg"


@pytest.fixture(scope="module")
def local_predictor():
    """The same checkpoint in-process, no detector: the reference for the server's numbers."""
    return Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=None)


def check_accounting(result):
    tokens = result["tokens"]
    kept = result["kept_patches"]
    assert tokens["kept_patches"] == kept
    assert result["sparsity"] == pytest.approx(1 - kept / 1024)
    assert tokens["bavit_tokens"] == 576 * 2 == 1152
    assert tokens["yolos_dense_tokens"] == 1024 * 12 == 12288
    assert tokens["yolos_pruned_tokens"] == 12 * kept
    assert tokens["total_tokens"] == 1152 + 12 * kept
    assert tokens["reduction_pct"] == pytest.approx((12288 - 1152 - 12 * kept) / 12288 * 100)


def test_analyze_endpoint_returns_numbers(client, local_predictor):
    result = client.predict(handle_file(str(CHELSEA)), 0.6, 3, 0, api_name="/analyze")
    assert result["threshold"] == 0.6 and result["cca_steps"] == 3 and result["keep_ratio"] is None
    assert result["target_sparsity"] is None
    assert result["image_size"] == [451, 300]
    check_accounting(result)
    # no detector weights: never boxes, and say why; latency measured on the random-init architecture
    assert result["detector_ready"] is False and result["detections"] is None
    assert "yolos-tiny" in result["detector_status"].lower()
    assert "random init" in result["latency_note"]
    assert result["timings_ms"]["pruned_ms"] > 0
    # the grid equals the library's own answer for the same checkpoint and image
    expected = local_predictor.analyze(str(CHELSEA), PruningSettings(threshold=0.6, cca_steps=3), detect=False)
    grid = np.array([[c == "1" for c in row] for row in result["grid_cca"]])
    np.testing.assert_array_equal(grid, expected.grid_cca)
    assert result["fg_tokens_raw"] == int(expected.grid_raw.sum())
    assert result["fg_tokens_cca"] == int(grid.sum())
    assert result["kept_patches"] == int(expected.keep_mask.sum())


def test_analyze_endpoint_threshold_and_keep_ratio(client):
    low = client.predict(handle_file(str(ROCKET)), 0.2, 0, 0, api_name="/analyze")
    high = client.predict(handle_file(str(ROCKET)), 0.8, 0, 0, api_name="/analyze")
    assert low["fg_tokens_raw"] >= high["fg_tokens_raw"]
    assert low["sparsity"] <= high["sparsity"]
    # CCA 0: the CCA grid is the raw grid
    assert low["fg_tokens_cca"] == low["fg_tokens_raw"]
    top = client.predict(handle_file(str(ROCKET)), 0.5, 0, 0.25, api_name="/analyze")
    assert top["keep_ratio"] == 0.25 and top["fg_tokens_raw"] == round(0.25 * 576) == 144
    assert top["threshold"] is None  # top-k uses no threshold
    check_accounting(top)


def test_analyze_endpoint_rejects_bad_settings_and_stays_up(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="threshold"):
        client.predict(handle_file(str(ROCKET)), 1.5, 3, 0, api_name="/analyze")
    with pytest.raises(AppError, match="keep_ratio"):
        client.predict(handle_file(str(ROCKET)), 0.5, 3, 2.0, api_name="/analyze")
    assert client.predict(handle_file(str(ROCKET)), 0.5, 3, 0, api_name="/analyze")["cca_steps"] == 3


def test_sessions_are_isolated(server):
    """Two clients (two sessions) load different images; each slider move answers for its own image."""
    first = Client(server.url, download_files=False, verbose=False)
    second = Client(server.url, download_files=False, verbose=False)
    controls = [MODE_THRESHOLD, 0.5, 35, 3, False, False]
    first.predict(handle_file(str(CHELSEA)), *controls, api_name="/page_image")
    second.predict(handle_file(str(ROCKET)), *controls, api_name="/page_image")
    texts = {}
    for name, session in (("chelsea", first), ("rocket", second)):
        outputs = session.predict(MODE_THRESHOLD, 0.65, 35, 2, False, False, api_name="/page_slider")
        texts[name] = json.loads(outputs[0])["texts"]["sparsity"]  # a slider's texts travel in #page-state
    for name, path in (("chelsea", CHELSEA), ("rocket", ROCKET)):
        expected = first.predict(handle_file(str(path)), 0.65, 2, 0, api_name="/analyze")
        assert f"{expected['kept_patches']} kept" in texts[name]
        assert f"BAViT FG tokens: {expected['fg_tokens_raw']} of 576" in texts[name]
    assert texts["chelsea"] != texts["rocket"]


def test_detector_present_path_draws_boxes(tmp_path, monkeypatch):
    """A loadable detector (tiny random YOLOS via save_pretrained) gives boxes, labels and scores in the panel."""
    monkeypatch.setattr("bavit.app.latency.REFRESH_S", float("inf"))  # the panel's medians stay the test's
    predictor = Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=str(apphelpers.tiny_yolos_dir()),
                          score_threshold=0.0)
    assert predictor.detector_ready
    explorer = Explorer(predictor)
    assert banner_text(explorer.predictor) == ""
    assert explorer.monitor.start().join(60)  # the latency warm-up (tiny models: about a second)
    session = explorer.open_image({"path": str(CHELSEA), "orig_name": "chelsea.jpg"})
    controls = Controls(threshold=0.5, cca_steps=3, detect=True, show_dense=True)
    explorer.measure_dense(session, controls)
    assert session.dense_ms > 0 and session.dense_detections
    view = explorer.render(session, controls)
    detections = view["analysis"].detections
    assert detections and all(set(d) == {"box", "label", "score"} for d in detections)
    assert {d["label"] for d in detections} <= {"cat", "dog", "cup"}
    assert [mark["caption"] for mark in view["det_pruned"]] == [f"{d['label']} {d['score']:.2f}" for d in detections]
    assert len(view["det_dense"]) == len(session.dense_detections)
    assert f"{len(detections)} detections" in view["det_message"]
    estimate = explorer.latency(view["analysis"])  # the medians the panel used
    assert f"**Speed-up: {estimate.speedup:.2f}x** for this image ({estimate.kept} of 1024" in view["latency"]
    # what pruning cost here: the dense detections matched to the pruned ones, counted, with the AP against them
    diff, line = pruning_cost(session.dense_detections, detections, predictor.score_threshold)
    assert f"**What pruning cost here:** {line}" in view["det_message"] and "lost (dense only)" in view["det_message"]
    assert line.startswith(f"kept {len(diff.kept)} of {len(session.dense_detections)} dense detection")
    everything = explorer.render(session, Controls(mode=MODE_TOPK, target_sparsity=0, detect=True, show_dense=True))
    assert everything["analysis"].accounting.kept_patches == 1024  # nothing pruned: the dense detections again
    assert "kept 10 of 10 dense detections; AP against the dense detections 1.00" in everything["det_message"]
    result = explorer.api_result({"path": str(CHELSEA)}, threshold=0.5)
    assert result["detector_ready"] is True and isinstance(result["detections"], list)
    for det in result["detections"]:
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 <= x1 <= 451 and 0 <= y0 <= y1 <= 300
    build_demo(explorer)  # the page builds with the detector panels enabled


def test_app_cli_flags_and_env(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bavit_app", apphelpers.ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    monkeypatch.setenv("BAVIT_DETECTOR", "some/dir")
    monkeypatch.setenv("BAVIT_CHECKPOINT", "x.safetensors")
    monkeypatch.setenv("BAVIT_DATA", "coco")
    args = app.parse_args([])
    assert (args.detector, args.bavit, args.data) == ("some/dir", "x.safetensors", "coco")
    args = app.parse_args(["--detector", "other", "--port", "9000"])
    assert args.detector == "other" and args.port == 9000


def test_slider_moves_do_not_rerun_bavit():
    """BAViT runs once per image; threshold / CCA / mode changes reuse the session's probabilities."""
    predictor = Predictor(bavit=apphelpers.random_bavit_checkpoint(seed=1), detector=None)
    explorer = Explorer(predictor)
    session = explorer.open_image({"path": str(ROCKET), "orig_name": "rocket.jpg"})
    assert predictor.bavit_runs == 1
    for threshold, cca_steps, mode in ((0.2, 0, MODE_THRESHOLD), (0.5, 3, MODE_THRESHOLD), (0.9, 5, MODE_THRESHOLD),
                                       (0.5, 3, MODE_TOPK)):
        view = explorer.render(session, Controls(mode=mode, threshold=threshold, cca_steps=cca_steps, detect=False))
        assert "Sparsity:" in view["sparsity"]
    assert predictor.bavit_runs == 1
    # the same picture in another session comes from the Predictor's content cache; a new picture runs BAViT
    again = explorer.open_image({"path": str(ROCKET), "orig_name": "rocket.jpg"})
    np.testing.assert_array_equal(again.prepared.fg_prob, session.prepared.fg_prob)
    assert predictor.bavit_runs == 1
    explorer.open_image({"path": str(CHELSEA), "orig_name": "chelsea.jpg"})
    assert predictor.bavit_runs == 2
