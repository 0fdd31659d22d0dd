"""Race-free app state: overlapping events of one session, the dense check-then-act, render without side effects.

The handlers are the functions the page wires (``build_handlers``), called from threads like Gradio's workers. A
slowed-down ``Predictor.predict`` forces real overlap; its delays are chosen so that, without the session gate,
the events would finish in the wrong order (or all measure the dense detector) and these tests would fail.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import threading
import time

import apphelpers
import gradio as gr
import numpy as np
import pytest
from PIL import Image

from bavit.app.explorer import Explorer
from bavit.app.session import SessionGate
from bavit.app.page import grid_hex
from bavit.app.ui import OUTPUT_KEYS, build_handlers
from bavit.app.session import MODE_SPARSITY, MODE_THRESHOLD, MODE_TOPK, Controls, ImageSession
from bavit.predictor import Predictor

CHELSEA = apphelpers.EXAMPLES / "chelsea.jpg"
SKIP = gr.skip()


@pytest.fixture(scope="module")
def grid_predictor():
    """Calibrated, so all three sparsity modes run."""
    return Predictor(bavit=apphelpers.calibrated_bavit_checkpoint(), detector=None)


@pytest.fixture(scope="module")
def detector_predictor():
    """A loadable tiny random YOLOS: dense timings, detections and speed-up points are real."""
    predictor = Predictor(bavit=apphelpers.calibrated_bavit_checkpoint(), detector=str(apphelpers.tiny_yolos_dir()),
                          score_threshold=0.0)
    assert predictor.detector_ready
    return predictor


def open_chelsea(explorer: Explorer) -> ImageSession:
    return explorer.open_image({"path": str(CHELSEA), "orig_name": "chelsea.jpg"})


def held_predict(monkeypatch, predictor, release_when):
    """Make the first of the Explorer's analyses (``predictor.predict`` calls with ``dense=``) wait until
    ``release_when()`` holds (the later events have arrived): without the session's gate the held event would finish
    last. Returns the list of the analyses' options, with their settings. The curve's points (``predict`` calls
    without ``dense=``) run as they are. No clock: the held call waits for a condition, not for a time."""
    original = predictor.predict
    calls = []
    lock = threading.Lock()

    def predict(prepared, settings=None, **options):
        if "dense" in options:
            with lock:
                calls.append({**options, "settings": settings})
                first = len(calls) == 1
            if first:
                assert wait_until(release_when, timeout=60), "the later events never arrived"
        return original(prepared, settings, **options)

    monkeypatch.setattr(predictor, "predict", predict)
    return calls


def arrived(session: ImageSession, count: int):
    """A condition: ``count`` more events than now have taken a ticket of ``session``'s gate."""
    target = session.gate.issued + count
    return lambda: session.gate.issued >= target


def wait_until(condition, timeout=2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def fire(session: ImageSession, calls):
    """Run ``calls`` ([(function, args)]) in threads, each started once the previous one took its ticket (so they
    arrive in list order, as events from one browser do). Returns (results in call order, completion order)."""
    results: list = [None] * len(calls)
    finished: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(index, function, args):
        try:
            out = function(*args)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            out = exc
            errors.append(exc)
        with lock:
            results[index] = out
            finished.append(index)

    threads = []
    for index, (function, args) in enumerate(calls):
        issued = session.gate.issued
        thread = threading.Thread(target=run, args=(index, function, args))
        thread.start()
        threads.append(thread)
        assert wait_until(lambda issued=issued, index=index: session.gate.issued > issued or index in finished), \
            "an event neither took a ticket nor finished"
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "an event never finished (deadlock?)"
    assert not errors, errors
    return results, finished


def apply_to_page(results, finished, keys):
    """What the browser ends up showing: outputs applied in completion order, skips leave a component as it is."""
    page = {}
    for index in finished:
        for key, value in zip(keys, results[index]):
            if value != SKIP:
                page[key] = value
    return page


def value_of(output):
    return output["value"] if isinstance(output, dict) and "__type__" in output else output


EVENT_KEYS = ("state", *OUTPUT_KEYS, "timer")  # what a control event answers: #page-state, the panels, the timer
SLIDER_EVENT_KEYS = ("state", "gt_confusion", "gt_stats", "timer")  # a slider's: its texts are in #page-state


def slider_text(outputs, key: str = "sparsity"):
    """A text panel of a slider event's answer (it travels in #page-state), or SKIP."""
    return SKIP if outputs[0] == SKIP else json.loads(outputs[0])["texts"][key]


def test_last_control_event_wins(grid_predictor, monkeypatch):
    explorer = Explorer(grid_predictor)
    handlers = build_handlers(explorer)
    session = open_chelsea(explorer)
    thresholds = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    for cca_steps in (2, 3):  # curves drawn once: keeps the timings below apart
        explorer.update(session, Controls(cca_steps=cca_steps, detect=False))
    # the first event's predict waits until every event has arrived: without the gate it would finish last
    calls = held_predict(monkeypatch, grid_predictor, arrived(session, len(thresholds)))
    events = [(handlers.page_controls, (session, MODE_THRESHOLD, t, 35, 3 if i % 2 else 2, False, False))
              for i, t in enumerate(thresholds)]
    results, finished = fire(session, events)

    # the page ends at the last event's settings
    page = apply_to_page(results, finished, EVENT_KEYS)
    last = Controls(threshold=thresholds[-1], cca_steps=3, detect=False)
    expected = explorer.render(session, last)
    assert page["sparsity"] == expected["sparsity"] and "threshold 0.70" in page["sparsity"]
    assert page["tokens"] == expected["tokens"]
    state = json.loads(page["state"])  # the grids the page draws
    assert state["raw"] == grid_hex(expected["analysis"].grid_raw)
    assert state["cca"] == grid_hex(expected["analysis"].grid_cca)
    # an event returns all of its outputs or gr.skip() for all; stale ones are skipped and did no work
    skipped = [i for i, out in enumerate(results) if all(value == SKIP for value in out)]
    rendered = [i for i, out in enumerate(results) if not any(value == SKIP for value in out[:-1])]  # bar the timer
    assert sorted(skipped + rendered) == list(range(len(events)))
    assert rendered[-1] == len(events) - 1 and skipped
    assert len(calls) < len(events)  # events superseded before their turn did not call the Predictor
    assert [i for i in finished if i in rendered] == rendered  # rendered views leave in arrival order
    for i in rendered:
        assert f"threshold {thresholds[i]:.2f}" in results[i][EVENT_KEYS.index("sparsity")]


def test_mode_events_keep_slider_visibility_in_order(grid_predictor, monkeypatch):
    explorer = Explorer(grid_predictor)
    handlers = build_handlers(explorer)
    session = open_chelsea(explorer)
    explorer.update(session, Controls(detect=False))  # the curve is drawn once: keeps the timings below apart
    # the first event's predict waits until every event has arrived: without the gate the events would finish in
    # the wrong order
    events = [
        (handlers.page_mode, (session, MODE_TOPK, 0.5, 60, 3, False, False)),  # to top-k (slowest)
        (handlers.page_slider, (session, MODE_TOPK, 0.5, 70, 3, False, False)),  # target slider
        (handlers.page_mode, (session, MODE_SPARSITY, 0.5, 70, 3, False, False)),  # to the calibrated mean (slow)
        (handlers.page_slider, (session, MODE_SPARSITY, 0.5, 40, 3, False, False)),  # target slider
        (handlers.page_mode, (session, MODE_THRESHOLD, 0.4, 40, 3, False, False)),  # back to threshold
        (handlers.page_slider, (session, MODE_THRESHOLD, 0.45, 40, 3, False, False)),  # threshold slider
    ]
    held_predict(monkeypatch, grid_predictor, arrived(session, len(events)))
    results, finished = fire(session, events)
    modes = (0, 2, 4)
    page = {}
    for index in finished:
        keys = ("threshold", "target", "page_state", *OUTPUT_KEYS) if index in modes else SLIDER_EVENT_KEYS
        for key, value in zip(keys, results[index]):
            if value != SKIP:
                page[key] = value
        if index not in modes and results[index][0] != SKIP:
            page["sparsity"] = slider_text(results[index])
    assert page["threshold"]["visible"] is True and page["target"]["visible"] is False
    assert "threshold 0.45" in page["sparsity"] and "Mean sparsity" not in page["sparsity"]
    # the first two mode events' visibility is stale (a newer mode event follows); the last one's is sent although
    # its view is skipped (the newer threshold move carries its mode but does not set the visibility)
    assert results[0][:2] == [SKIP, SKIP] and results[2][:2] == [SKIP, SKIP]
    assert all(value == SKIP for value in results[4][2:])
    assert results[4][0]["visible"] is True and results[4][1]["visible"] is False
    # rendered views carry their own mode's text
    for index, phrase in ((0, "held at the target 60%"), (1, "held at the target 70%"),
                          (2, "Mean sparsity 70% over images"), (3, "Mean sparsity 40% over images")):
        text = results[index][3 + OUTPUT_KEYS.index("sparsity")] if index in modes else slider_text(results[index])
        if text != SKIP:
            assert phrase in text


def test_dense_detector_is_measured_once(detector_predictor, monkeypatch):
    explorer = Explorer(detector_predictor)
    handlers = build_handlers(explorer)
    # direct calls from several threads: the check and the measurement are one step
    session = open_chelsea(explorer)
    calls = held_predict(monkeypatch, detector_predictor, arrived(session, 4))
    threads = [threading.Thread(target=explorer.measure_dense, args=(session, Controls())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(call["dense"] for call in calls) == 1 and session.dense_ms > 0
    # through the handlers (a fresh session of the same image: BAViT comes from the cache)
    monkeypatch.undo()
    session = open_chelsea(explorer)
    calls = held_predict(monkeypatch, detector_predictor, arrived(session, 4))
    events = [(handlers.page_controls, (session, MODE_THRESHOLD, t, 35, 3, True, True)) for t in (0.3, 0.4, 0.5, 0.6)]
    results, finished = fire(session, events)
    assert sum(call["dense"] for call in calls) == 1
    page = apply_to_page(results, finished, EVENT_KEYS)
    assert "threshold 0.60" in page["sparsity"] and "Speed-up: warming up" in page["latency"]  # monitor not started
    assert json.loads(page["state"])["dense"]  # the dense detections' marks, for the page to draw


def fingerprint(value):
    """A comparable copy of a value: arrays and images by content, dataclasses and containers recursively."""
    if isinstance(value, np.ndarray):
        return ("array", value.shape, str(value.dtype), value.tobytes())
    if isinstance(value, Image.Image):
        return ("image", value.size, value.mode, value.tobytes())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, id(value),
                tuple((f.name, fingerprint(getattr(value, f.name))) for f in dataclasses.fields(value) if f.compare))
    if isinstance(value, dict):
        return ("dict", tuple((k, fingerprint(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(fingerprint(v) for v in value))
    return ("value", repr(value))


def test_render_leaves_the_session_unchanged(detector_predictor):
    explorer = Explorer(detector_predictor)
    assert explorer.monitor.start().join(60)  # warm medians: every detector render has a speed-up point
    session = open_chelsea(explorer)
    explorer.measure_dense(session, Controls())
    for controls in (Controls(threshold=0.4), Controls(threshold=0.6, cca_steps=1, show_dense=True),
                     Controls(mode=MODE_TOPK, target_sparsity=50.0, detect=False),
                     Controls(mode=MODE_SPARSITY, target_sparsity=50.0, cca_steps=2, show_dense=True)):
        before = fingerprint(session)
        view = explorer.render(session, controls)
        assert fingerprint(session) == before
        assert view["record"].cca_steps == controls.cca_steps
        assert (view["record"].point is None) == (not controls.detect)
    # what a render measured is kept only by record (update = render + record, under the gate)
    view = explorer.render(session, Controls(threshold=0.4))
    session.record(view["record"])
    assert session.measured[3] == (view["record"].point,) and session.plots[3] is view["record"].curve
    view = explorer.update(session, Controls(threshold=0.5))
    assert len(session.measured[3]) == 2 and explorer.render(session, Controls())["record"].curve is session.plots[3]


def test_session_survives_gradio_state_handling(grid_predictor):
    explorer = Explorer(grid_predictor)
    session = open_chelsea(explorer)
    gr.State(session)  # deep-copies its initial value
    copied, unpickled = copy.deepcopy(session), pickle.loads(pickle.dumps(session))
    for other in (copied, unpickled):
        assert isinstance(other.gate, SessionGate) and other.gate is not session.gate
        np.testing.assert_array_equal(other.prepared.fg_prob, session.prepared.fg_prob)
    assert "gate" not in repr(session)
    assert not next(f for f in dataclasses.fields(ImageSession) if f.name == "gate").compare
    # a copy has its own gate: usable while the original is held; and a gate is re-entrant in its holder's thread
    with session.gate.hold(), copied.gate.hold(), session.gate.hold():
        pass


def test_gate_runs_holders_in_arrival_order_and_retire_skips_waiting_events(grid_predictor):
    gate = SessionGate()
    order = []

    def hold(name, supersede):
        with gate.hold(supersede=supersede) as ticket:
            with gate.hold() as inner:  # re-entrant, under the same ticket
                assert inner == ticket
            order.append((name, gate.superseded(ticket), gate.superseded(ticket, "mode")))

    threads = []
    with gate.hold():
        for name, supersede in (("a", ("view", "mode")), ("b", ()), ("c", "view"), ("d", ())):
            issued = gate.issued
            threads.append(threading.Thread(target=hold, args=(name, supersede)))
            threads[-1].start()
            assert wait_until(lambda issued=issued: gate.issued > issued)
    for thread in threads:
        thread.join()
    assert order == [("a", True, False), ("b", True, False), ("c", False, False), ("d", False, False)]

    explorer = Explorer(grid_predictor)
    handlers = build_handlers(explorer)
    session = open_chelsea(explorer)
    outcome = {}
    with session.gate.hold():  # an event is running on the old image
        issued = session.gate.issued
        waiting = threading.Thread(target=lambda: outcome.update(
            view=handlers.page_controls(session, MODE_THRESHOLD, 0.3, 35, 3, False, False)))
        waiting.start()
        assert wait_until(lambda: session.gate.issued > issued)
        retiring = threading.Thread(target=session.retire)
        retiring.start()
        assert wait_until(lambda: session.gate.issued > issued + 1)
    waiting.join()
    retiring.join()
    assert outcome["view"] == [SKIP] * len(EVENT_KEYS)


def test_client_burst_on_one_session(server):
    """Overlapping slider events from one gradio_client session: each answer is its own or a skip."""
    from gradio_client import Client, handle_file

    client = Client(server.url, download_files=False, verbose=False)
    client.predict(handle_file(str(CHELSEA)), MODE_THRESHOLD, 0.5, 35, 3, False, False, api_name="/page_image")
    thresholds = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    jobs = [client.submit(MODE_THRESHOLD, t, 35, 3, False, False, api_name="/page_slider") for t in thresholds]
    answers = [job.result(timeout=120) for job in jobs]
    shown = 0
    for threshold, outputs in zip(thresholds, answers):
        if all(value == SKIP for value in outputs):  # superseded by a newer call: gr.skip() for every output
            continue
        assert f"threshold {threshold:.2f}" in slider_text(outputs)  # its own settings
        shown += 1
    assert shown >= 1
    final = client.predict(MODE_THRESHOLD, 0.65, 35, 3, False, False, api_name="/page_slider")
    assert "threshold 0.65" in slider_text(final)
    assert server.alive()
