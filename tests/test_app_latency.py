"""Live latency in the app: the monitor's rules on fed samples (exact), its background warm-up with tiny models, the
page and API showing the medians it used, and the backend setting reaching the Predictor."""
from __future__ import annotations

import importlib.util
import json
import re
import statistics
import threading
import time

import apphelpers
import gradio as gr
import numpy as np
import pytest
from PIL import Image

from bavit.pruning.settings import PruningSettings
from bavit.app.ui import create_demo, create_explorer
from bavit.app.explorer import Explorer
from bavit.app.ui import OUTPUT_KEYS, build_handlers
from bavit.app.latency import KEPT_TOLERANCE, MIN_DENSE_RUNS, WINDOW, LatencyWindows, interpolate
from bavit.app.session import MODE_THRESHOLD, Controls
from bavit.app.latency import CURVE_COUNTS, LatencyMonitor
from bavit.errors import BAViTError
from bavit.predictor import Predictor

CHELSEA = apphelpers.EXAMPLES / "chelsea.jpg"
WARMUP_THREAD = "bavit-latency-warm-up"


@pytest.fixture(scope="module")
def detector_predictor():
    """Tiny random YOLOS (loadable, so detections and the detector path are real) on the torch backend."""
    return Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=str(apphelpers.tiny_yolos_dir()),
                     backend="torch")


def test_first_runs_are_dropped_and_medians_are_exact():
    windows = LatencyWindows()
    windows.add("dense", 500.0)  # the cold first run: dropped
    for ms in (10.0, 12.0, 11.0, 13.0):
        windows.add("dense", ms)
    assert windows.estimate(500).dense_ms is None  # 4 warm runs < MIN_DENSE_RUNS
    assert windows.estimate(500).dense_runs == 4  # the runs so far, for the "warming up" line
    windows.add("dense", 14.0)
    assert MIN_DENSE_RUNS == 5 and windows.estimate(500).dense_ms == 12.0
    windows.add("dense", 1000.0, overlapped=True)  # shared the CPU with another run: dropped
    assert windows.estimate(500).dense_ms == 12.0 and windows.samples()["dense"] == [10.0, 12.0, 11.0, 13.0, 14.0]

    windows.add("bavit", 300.0)  # cold
    windows.add("bavit", 2.0)
    windows.add("bavit", 4.0)
    assert windows.estimate(500).bavit_ms is None
    windows.add("bavit", 3.0)
    assert windows.estimate(500).bavit_ms == 3.0

    windows.add("pruned", 900.0, kept=500)  # cold
    windows.add("pruned", 5.0, kept=500)
    windows.add("pruned", 7.0, kept=500 + KEPT_TOLERANCE)
    windows.add("pruned", 99.0, kept=500 + KEPT_TOLERANCE + 1)  # another kept count
    estimate = windows.estimate(500)  # 2 warm runs near 500 and no start-up curve yet
    assert (estimate.pruned_ms, estimate.pruned_source, estimate.pruned_runs, estimate.speedup) == (None, "", 0, None)
    windows.add("pruned", 6.0, kept=500 - KEPT_TOLERANCE)
    estimate = windows.estimate(500)
    assert (estimate.pruned_ms, estimate.pruned_source, estimate.pruned_runs) == (6.0, "warm runs", 3)
    assert estimate.speedup == 12.0 / (3.0 + 0.0 + 6.0)  # no CCA run yet: 0 ms

    for ms in (1.0, 3.0, 2.0):  # the keep-mask rule has no cold run
        windows.add_cca(ms)
    estimate = windows.estimate(500)
    assert (estimate.dense_ms, estimate.bavit_ms, estimate.cca_ms, estimate.pruned_ms) == (12.0, 3.0, 2.0, 6.0)
    assert (estimate.dense_runs, estimate.bavit_runs, estimate.cca_runs, estimate.pruned_runs) == (5, 3, 3, 3)
    assert estimate.pipeline_ms == 11.0 and estimate.speedup == 12.0 / 11.0
    assert estimate.as_dict()["dense"] == 12.0 and estimate.as_dict()["pipeline"] == 11.0

    # a request's timings: CCA, and the pruned run at its kept count (an overlapped one counts for CCA only)
    windows.add_timings({"cca_ms": 2.0, "pruned_ms": 50.0}, kept=700, overlapped=True)
    windows.add_timings({"cca_ms": 2.0, "pruned_ms": 50.0}, kept=700)
    assert windows.samples()["cca"][-2:] == [2.0, 2.0] and windows.samples()["pruned"][-1] == (700, 50.0)

    for ms in range(100, 120):  # rolling window: the most recent WINDOW warm runs
        windows.add("dense", float(ms))
    assert windows.estimate(500).dense_ms == statistics.median(range(120 - WINDOW, 120)) == 112.0


def test_start_up_curve_interpolation():
    curve = [(256, 20.0), (768, 60.0)]
    assert interpolate(curve, 512) == 40.0
    assert interpolate(curve, 1024) == 80.0  # extended past the last point
    assert interpolate(curve, 0) == 10.0  # extended below the first, never under half the smallest point
    assert interpolate(curve[:1], 512) is None


def release_when(event: threading.Event, function):
    """``function`` that first waits for ``event``: holds the warm-up at its first detector run."""

    def held(*args, **kwargs):
        assert event.wait(60), "the test never released the warm-up"
        return function(*args, **kwargs)

    return held


def test_warm_up_in_background_then_page_shows_the_medians(detector_predictor, monkeypatch):
    explorer = Explorer(detector_predictor, ladders=False)  # the medians are the test's runs only
    monitor = explorer.monitor
    handlers = build_handlers(explorer)
    release = threading.Event()
    monkeypatch.setattr(detector_predictor, "run_detector", release_when(release, detector_predictor.run_detector))
    monkeypatch.setattr("bavit.app.latency.REFRESH_S", float("inf"))  # no background refresh between the checks
    controls = (MODE_THRESHOLD, 0.5, 35, 3, True, False)
    try:
        assert monitor.start() is monitor and monitor.warming_up
        # the page answers while the warm-up is held mid-way: no number yet, it says "warming up"
        outputs = handlers.page_image({"path": str(CHELSEA), "orig_name": "chelsea.jpg"}, None, *controls)
        session = outputs[0]
        latency = outputs[2 + OUTPUT_KEYS.index("latency")]  # after the session and #page-state
        assert "**Speed-up: warming up**" in latency and f"0 of {MIN_DENSE_RUNS} warm dense runs" in latency
        assert explorer.api_result({"path": str(CHELSEA)}, threshold=0.5)["speedup"] is None
        assert monitor.warming_up and monitor.samples()["dense"] == []
        assert handlers.page_latency(session) == [gr.skip()] * 4  # the page's timer: nothing to fill in yet
    finally:
        release.set()
    assert monitor.join(120) and not monitor.warming_up and monitor.error is None
    # with no user event, the page's timer now fills the panel in with the medians, once
    state, filled, message, timer = handlers.page_latency(session)  # the latency panel only; the timer off
    assert re.search(r"\*\*Speed-up: \d+\.\d\dx\*\* for this image", filled), filled
    assert message == state == gr.skip() and "warming up" not in filled
    assert isinstance(timer, gr.Timer) and timer.active is False
    assert handlers.page_latency(session)[:3] == [gr.skip()] * 3 and handlers.page_latency(None)[:3] == [gr.skip()] * 3
    samples = monitor.samples()
    assert len(samples["dense"]) == 6 and len(samples["bavit"]) == 5
    assert sorted(samples["curve"]) == list(CURVE_COUNTS) and all(len(v) == 3 for v in samples["curve"].values())
    assert monitor.curve() == [(k, statistics.median(v)) for k, v in sorted(samples["curve"].items())]

    # slider changes with the detector feed pruned runs at this image's kept count
    kept = int(detector_predictor.predict(session.prepared, PruningSettings(threshold=0.5, cca_steps=3), detect=False)
               .accounting.kept_patches)
    for _ in range(3):
        view = handlers.page_controls(session, *controls)
    latency = view[1 + OUTPUT_KEYS.index("latency")]
    samples = monitor.samples()
    near = [ms for count, ms in reversed(samples["pruned"]) if abs(count - kept) <= KEPT_TOLERANCE][:WINDOW]
    assert len(near) >= 3  # the three requests (none overlapped another run: nothing else ran)
    dense, bavit = statistics.median(samples["dense"]), statistics.median(samples["bavit"])
    cca, pruned = statistics.median(samples["cca"]), statistics.median(near)
    speedup = dense / (bavit + cca + pruned)
    assert f"**Speed-up: {speedup:.2f}x** for this image ({kept} of 1024 patches kept)" in latency
    assert f"| YOLOS dense | {dense:.1f} | 6 |" in latency and f"| BAViT | {bavit:.1f} | 5 |" in latency
    assert f"| YOLOS pruned, {kept} kept | {pruned:.1f} | {len(near)} |" in latency
    assert "Start-up curve, YOLOS pruned ms by kept patches: " in latency
    # the analyze API returns the same quotient of medians it shows (its own run is one more sample)
    result = explorer.api_result({"path": str(CHELSEA)}, threshold=0.5)
    samples = monitor.samples()
    near = [ms for count, ms in reversed(samples["pruned"]) if abs(count - kept) <= KEPT_TOLERANCE][:WINDOW]
    expected = dense / (bavit + statistics.median(samples["cca"]) + statistics.median(near))
    assert result["kept_patches"] == kept and result["speedup"] == pytest.approx(expected, rel=1e-12)
    medians = result["latency_ms"]
    assert (medians["dense"], medians["bavit"], medians["dense_runs"]) == (dense, bavit, 6)
    assert medians["pruned_source"] == "warm runs" and medians["pruned_runs"] == len(near)
    # grid-only: no latency claim
    view = handlers.page_controls(session, MODE_THRESHOLD, 0.5, 35, 3, False, False)
    assert view[1 + OUTPUT_KEYS.index("latency")].startswith("Detector off")


def test_create_demo_starts_the_warm_up_without_waiting(monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(Predictor, "run_detector", release_when(release, Predictor.run_detector))
    try:
        demo = create_demo(bavit=apphelpers.random_bavit_checkpoint(), detector=str(apphelpers.tiny_yolos_dir()),
                           backend="torch")
        assert demo is not None  # built while the warm-up waits at its first detector run
        warm_ups = [thread for thread in threading.enumerate() if thread.name == WARMUP_THREAD and thread.is_alive()]
        assert len(warm_ups) == 1 and warm_ups[0].daemon
    finally:
        release.set()
    warm_ups[0].join(120)  # finish before the interpreter does (a torch call at exit aborts the process)
    assert not warm_ups[0].is_alive()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_backend_reaches_the_predictor(backend):
    explorer = create_explorer(bavit=apphelpers.random_bavit_checkpoint(), detector=None, backend=backend)
    assert explorer.predictor.backend == backend


def test_app_backend_flag_and_env(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("bavit_app", apphelpers.ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    monkeypatch.delenv("BAVIT_BACKEND", raising=False)
    assert app.parse_args([]).backend is None  # the Predictor's default
    monkeypatch.setenv("BAVIT_BACKEND", "torch")
    assert app.parse_args([]).backend == "torch"
    assert app.parse_args(["--backend", "onnxruntime"]).backend == "onnxruntime"
    # main passes it on to create_demo; an unknown backend is one line, no traceback
    received = {}

    def create_demo(**kwargs):
        received.update(kwargs)
        return create_explorer(bavit=apphelpers.random_bavit_checkpoint(), detector=None, backend=kwargs["backend"])

    monkeypatch.setattr(app, "create_demo", create_demo)
    with pytest.raises(SystemExit) as exited:
        app.main(["--backend", "tensorrt"])
    assert exited.value.code == 2 and capsys.readouterr().err.startswith("error: unknown backend 'tensorrt'")
    assert received["backend"] == "tensorrt"
    with pytest.raises(BAViTError, match="unknown backend"):
        create_explorer(bavit=apphelpers.random_bavit_checkpoint(), detector=None, backend="tensorrt")


def test_a_monitor_never_started_shows_no_number(detector_predictor):
    explorer = Explorer(detector_predictor)
    session = explorer.open_image({"path": str(CHELSEA), "orig_name": "chelsea.jpg"})
    view = explorer.update(session, Controls(threshold=0.5, detect=True))
    assert "**Speed-up: warming up**" in view["latency"]  # never started: no medians, no number


def test_medians_prefer_the_last_half_minute():
    from bavit.app.latency import MAX_AGE_S, _pool

    now = 1000.0
    old = [(now - MAX_AGE_S - 1.0, ms) for ms in (90.0, 91.0, 92.0, 93.0, 94.0)]  # the start-up's runs
    recent = [(now - 1.0, ms) for ms in (50.0, 52.0, 51.0, 53.0)]
    assert _pool(old + recent, MIN_DENSE_RUNS, now) == [ms for _, ms in old + recent]  # 4 recent: every run
    recent.append((now, 54.0))
    assert _pool(old + recent, MIN_DENSE_RUNS, now) == [50.0, 52.0, 51.0, 53.0, 54.0]  # 5 recent: only those
    assert _pool(recent[:2], MIN_DENSE_RUNS, now) == []  # too few to take a median of
    many = [(now - 100.0, float(ms)) for ms in range(20)]
    assert _pool(many, MIN_DENSE_RUNS, now) == [float(ms) for ms in range(20 - WINDOW, 20)]  # the newest WINDOW


def test_app_use_re_times_dense_and_bavit_in_the_background(detector_predictor):
    """While the app is used, dense and BAViT get fresh runs (the speed-up's medians share the pruned runs' load);
    a monitor whose warm-up never started runs nothing in the background."""
    import bavit.app.latency as timing

    idle = Explorer(detector_predictor)
    session = idle.open_image({"path": str(CHELSEA), "orig_name": "chelsea.jpg"})
    idle.update(session, Controls(threshold=0.5))
    assert idle.monitor._refresher is None and idle.monitor.samples()["dense"] == []

    ahead = [0.0]  # a clock the test moves on: the monitor's samples age without waiting
    monitor = LatencyMonitor(detector_predictor, clock=lambda: time.monotonic() + ahead[0])
    explorer = Explorer(detector_predictor, monitor=monitor)
    assert explorer.monitor.start().join(60) and explorer.monitor.error is None
    before = explorer.monitor.samples()
    explorer.update(session, Controls(threshold=0.5))
    assert explorer.monitor._refresher is None  # the warm-up's runs are fresh: no refresh yet
    ahead[0] = timing.REFRESH_S + 1.0  # now they are old
    explorer.update(session, Controls(threshold=0.5))
    refresher = explorer.monitor._refresher
    assert refresher is not None and refresher.daemon
    refresher.join(30)
    after = explorer.monitor.samples()
    assert len(after["dense"]) == len(before["dense"]) + 1 and len(after["bavit"]) == len(before["bavit"]) + 1
    assert after["dense"][:-1] == before["dense"] and explorer.monitor.error is None
    assert explorer.monitor.stop(10)


def test_app_bench_verdict():
    from benchmarks.app_agreement import compare

    bench = {"speedup": 1.40, "kept_patches": 520.0}
    agree = compare({"speedup": 1.50, "kept_patches": 520}, bench)
    assert agree["ratio"] == pytest.approx(1.50 / 1.40) and agree["agree"] is True
    far = compare({"speedup": 1.70, "kept_patches": 520}, bench)
    assert far["ratio"] == pytest.approx(1.70 / 1.40) and far["agree"] is False
    assert compare({"speedup": 1.26, "kept_patches": 520}, bench)["agree"] is True  # ratio 0.9: within +-10%
    assert compare({"speedup": 1.25, "kept_patches": 520}, bench)["agree"] is False
    warming = compare({"speedup": None, "kept_patches": 520}, bench)  # the app never had its medians
    assert warming["ratio"] is None and warming["agree"] is False


def test_the_first_image_is_answered_while_the_detector_is_being_built(monkeypatch):
    """A first visitor does not wait for the detector's export: while the warm-up builds the detector's runner, an
    image gets its grids and texts at once, the detector panels say it is warming up, and the page's timer fills
    in the detections and the latency once the runner is built (no user event)."""
    import bavit.predictor
    from bavit.app.page import DETECTOR_WARMING

    predictor = Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=str(apphelpers.tiny_yolos_dir()),
                          score_threshold=0.0, backend="torch")
    explorer = Explorer(predictor)
    handlers = build_handlers(explorer)
    building, release = threading.Event(), threading.Event()
    real = bavit.predictor.detector_runner

    def held_build(*args, **kwargs):  # the warm-up's export of the detector, held by the test
        building.set()
        assert release.wait(60), "the test never released the export"
        return real(*args, **kwargs)

    monkeypatch.setattr(bavit.predictor, "detector_runner", held_build)
    predictor.warm_up(detect=False)  # BAViT's runner is there
    explorer.monitor.start()  # the app's warm-up: builds the detector's runner, then times the models
    try:
        assert building.wait(60) and explorer.monitor.building("detector")
        outputs = handlers.page_image({"path": str(CHELSEA), "orig_name": "chelsea.jpg"}, None,
                                      MODE_THRESHOLD, 0.5, 35, 3, True, False)
        session, panels = outputs[0], dict(zip(OUTPUT_KEYS, outputs[2:]))
        assert "Sparsity:" in panels["sparsity"] and panels["det_message"] == DETECTOR_WARMING
        assert panels["latency"].startswith(DETECTOR_WARMING)
        assert isinstance(outputs[-1], gr.Timer) and outputs[-1].active is True  # the page's timer switched on
        assert handlers.page_latency(session) == [gr.skip()] * 4  # still being built
    finally:
        release.set()
    assert explorer.monitor.join(120) and explorer.monitor.error is None
    assert predictor.built("detector") and not explorer.monitor.building("detector")
    state, latency, message, _timer = handlers.page_latency(session)
    assert "detections from the pruned YOLOS" in message and json.loads(state)["detections"] is not None
    assert latency != DETECTOR_WARMING and "YOLOS pruned" in latency  # the pruned run is timed now


@pytest.mark.slow
def test_the_warm_up_exports_in_a_child_process_and_closes_it():
    """The app's warm-up exports in a child process (``create_demo`` starts it first): the runners it builds from
    its graphs serve the Predictor, and the child has exited once it is done."""
    from bavit.deploy.export import ExportProcess

    predictor = Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=str(apphelpers.tiny_yolos_dir()),
                          backend="onnxruntime", bavit_int8=False)
    exporter = ExportProcess()
    monitor = LatencyMonitor(predictor).start(exporter)
    assert monitor.join(300) and monitor.error is None
    assert predictor.built("bavit") and predictor.built("detector") and exporter._process.returncode == 0
    image = Image.open(CHELSEA).convert("RGB")
    here = Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=None, backend="torch").run_bavit(image)
    assert np.abs(predictor.run_bavit(image) - here).max() <= 1e-5  # the child's float32 graph equals torch


def test_a_warm_up_that_fails_before_its_exports_still_ends_the_export_child(monkeypatch):
    """The export child is closed whatever stops the warm-up: here the detector's input fails before any export, the
    monitor reports why, and the child has exited (its input closed: exit status 0)."""
    from bavit.deploy.export import ExportProcess

    predictor = Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=str(apphelpers.tiny_yolos_dir()),
                          backend="torch")

    def broken(image):
        raise OSError("no pixels today")

    monkeypatch.setattr(predictor, "yolos_pixels", broken)
    exporter = ExportProcess()
    monitor = LatencyMonitor(predictor).start(exporter)
    assert monitor.join(120) and monitor.error == "OSError: no pixels today"
    assert exporter._process.returncode == 0 and not predictor.built("bavit")


def test_the_first_image_is_answered_while_bavit_is_being_exported(monkeypatch):
    """A first visitor does not wait for BAViT's export either: while the warm-up builds BAViT's runner, an uploaded
    image runs the torch model at once (not cached); the next upload after the build runs the backend's runner."""
    import bavit.predictor

    predictor = Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=None, backend="torch")
    explorer = Explorer(predictor)
    building, release = threading.Event(), threading.Event()
    real = bavit.predictor.bavit_runner

    def held_build(*args, **kwargs):  # the warm-up's export of BAViT, held by the test
        building.set()
        assert release.wait(60), "the test never released the export"
        return real(*args, **kwargs)

    monkeypatch.setattr(bavit.predictor, "bavit_runner", held_build)
    explorer.monitor.start()
    try:
        assert building.wait(60) and explorer.monitor.building("bavit")
        first = explorer.open_image({"path": str(CHELSEA), "orig_name": "chelsea.jpg"})
        assert first.prepared.bavit_graph == "torch float32" and first.prepared.bavit_ms > 0
        assert not predictor.built("bavit") and len(predictor._cache) == 0
    finally:
        release.set()
    assert explorer.monitor.join(60) and predictor.built("bavit")
    again = explorer.open_image({"path": str(CHELSEA), "orig_name": "chelsea.jpg"})
    assert len(predictor._cache) == 1 and predictor.bavit_runs == 2  # the runner's result is cached
    assert (again.prepared.fg_prob == first.prepared.fg_prob).all()  # this backend is torch too
