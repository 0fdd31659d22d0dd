"""The ladders (bavit/app/ladder.py): the grid ladder's positions, the detection ladder's order (nearest first,
each keep mask once), the worker that takes the sessions' ladders in turn and stops a cancelled one, and the
Explorer's ladder for a session with a detector, checked against its own renders."""
from __future__ import annotations

import json
import threading

import apphelpers
import gradio as gr
import numpy as np
import pytest
from PIL import Image

from bavit.app.explorer import RUNG_KEYS, Explorer, rung_result
from bavit.app.ladder import (
    COARSE_STEPS,
    TARGET_VALUES,
    THRESHOLD_VALUES,
    DetectionLadder,
    LadderWorker,
    grid_ladder,
)
from bavit.app.session import MODE_THRESHOLD, MODE_TOPK, Controls, ImageSession
from bavit.app.ui import build_handlers
from bavit.predictor import PreparedImage, Predictor

CHELSEA = apphelpers.EXAMPLES / "chelsea.jpg"


def session_with(probs: np.ndarray) -> ImageSession:
    """A session whose BAViT grid is ``probs`` (made by hand)."""
    probs = probs.astype(np.float32)
    probs.setflags(write=False)
    image = Image.new("RGB", (64, 64))
    return ImageSession(name="hand.png", prepared=PreparedImage(image, probs, 0.0, "hand"), display=image, bavit_ms=0.0)


@pytest.fixture(scope="module")
def grid_predictor():
    return Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=None)


def test_slider_positions():
    assert THRESHOLD_VALUES[:3] == (0.0, 0.01, 0.02) and THRESHOLD_VALUES[-1] == 1.0 and len(THRESHOLD_VALUES) == 101
    assert TARGET_VALUES[0] == 0.0 and TARGET_VALUES[-1] == 95.0 and len(TARGET_VALUES) == 96


def test_grid_ladder_shares_equal_masks_and_finds_positions(grid_predictor):
    """Probabilities of 0.1, 0.3 and 0.6 in three bands: the threshold ladder has exactly four keep masks (past 0.1,
    0.3 and 0.6 the grids change; between them they do not), and its positions are the slider's."""
    probs = np.full((24, 24), 0.1)
    probs[8:16] = 0.3
    probs[16:] = 0.6
    session = session_with(probs)
    ladder = grid_ladder(grid_predictor, session, Controls(mode=MODE_THRESHOLD, cca_steps=0, detect=False))
    masks = [rung.mask for rung in ladder.rungs]
    kept_cells = {rung.mask: int(ladder.grids[rung.mask].sum()) for rung in ladder.rungs}
    assert sorted(kept_cells.values()) == [0, 8 * 24, 16 * 24, 24 * 24]  # all, two bands, one band, none
    assert masks[10] == masks[0] and masks[11] != masks[10] and masks[30] == masks[11]  # 0.1 kept up to 0.10
    assert masks[60] == masks[31] != masks[30] and masks[61] != masks[60] and masks[61] == masks[100]
    assert kept_cells[masks[60]] == 8 * 24 and kept_cells[masks[100]] == 0  # a probability equal to it is kept
    assert ladder.index(Controls(mode=MODE_THRESHOLD, threshold=0.37)) == 37
    assert ladder.index(Controls(mode=MODE_THRESHOLD, threshold=0.375)) is None
    rung = ladder.rungs[37]
    # the band's rows 16..23 of 24 are the detector's rows 21..31 of 32 (nearest): 11 x 32 patches kept
    assert rung.controls.threshold == 0.37 and rung.controls.detect is False and rung.kept == 352
    assert "threshold 0.37" in rung.sparsity and "| YOLOS pruned (352 kept × 12 layers) | 4224 |" in rung.tokens


def ladder_of(grid_predictor, center: int = 0) -> DetectionLadder:
    probs = np.tile(np.linspace(0.0, 1.0, 24, dtype=np.float32), (24, 1))  # a new column kept every 1/23
    session = session_with(probs)
    controls = Controls(mode=MODE_THRESHOLD, threshold=0.5, cca_steps=0)
    ladder = grid_ladder(grid_predictor, session, controls)
    return DetectionLadder(session, ladder, controls, center=center)


def test_detection_ladder_goes_coarse_then_nearest_first_and_computes_each_mask_once(grid_predictor):
    job = ladder_of(grid_predictor, center=50)
    order = []
    while (rung := job.next_rung()) is not None:
        order.append(rung)
        job.add(rung.mask, {"at": rung.index})
    assert len(order) == job.masks == len({rung.mask for rung in job.ladder.rungs}) == 24  # 24..1 columns kept
    # a new column every 1/23 of the threshold: 21 positions in steps of 0.05 hold 21 of the 24 masks
    coarse = {rung.mask for rung in job.ladder.rungs if rung.index % COARSE_STEPS == 0}
    assert len(coarse) == 21 and [rung.mask in coarse for rung in order] == [True] * 21 + [False] * 3
    assert all(rung.index % COARSE_STEPS == 0 for rung in order[:21])
    for part in (order[:21], order[21:]):  # each part: the nearest not yet computed
        distances = [abs(rung.index - 50) for rung in part]
        assert distances == sorted(distances)
    assert order[0].index == 50
    assert job.complete and job.missing((), 100) == {rung.mask: {"at": rung.index} for rung in order}
    nearest = sorted(order[1:], key=lambda rung: min(abs(other.index - 50) for other in job.ladder.rungs
                                                     if other.mask == rung.mask))
    assert list(job.missing([order[0].mask], 3)) == [rung.mask for rung in nearest[:3]]  # what the page lacks, nearest first

    job = ladder_of(grid_predictor, center=0)
    first = job.next_rung()
    job.add(first.mask, {})
    job.center = 100  # the slider moved: the far end comes next
    assert job.next_rung().index == 100
    assert not job.complete
    job.cancelled.set()
    assert job.next_rung() is None and job.complete and list(job.missing((), 10)) == [first.mask]


def test_worker_takes_sessions_in_turn_and_drops_cancelled_ladders(grid_predictor):
    done, seen = threading.Event(), []
    first, second = ladder_of(grid_predictor), ladder_of(grid_predictor)

    def compute(job, rung):
        seen.append((job.id, rung.mask))
        if len(seen) == 6:
            first.cancelled.set()  # the first session's image changed: its ladder stops
        if second.results and len(second.results) == second.masks - 1:
            done.set()
        return {"mask": rung.mask}

    worker = LadderWorker(compute, lambda: True)
    worker.submit(first)
    worker.submit(second)
    assert done.wait(30)
    worker.stop()
    assert [job for job, _ in seen[:4]] == [first.id, second.id, first.id, second.id]  # in turn
    assert len([1 for job, _ in seen if job == first.id]) == 3  # none after its cancellation
    assert len(second.results) == second.masks and all(r == {"mask": m} for m, r in second.results.items())

    third = ladder_of(grid_predictor)
    replaced = DetectionLadder(third.session, third.ladder, third.controls)
    worker = LadderWorker(lambda job, rung: {}, lambda: False)  # never the background's turn: nothing runs
    worker.submit(third)
    worker.submit(replaced)  # the same session's new ladder cancels its old one
    assert third.cancelled.is_set() and not replaced.cancelled.is_set()
    worker.cancel(third.session)
    assert replaced.cancelled.is_set() and replaced.results == {}


@pytest.mark.slow
def test_the_explorer_ladder_holds_what_the_server_renders(monkeypatch):
    """With a detector (tiny random YOLOS, torch): an event with the detector on starts the session's ladder; its
    rungs are the Explorer's own renders at those positions, the page's timer sends them, and a new CCA setting
    starts a new ladder (the old one cancelled)."""
    monkeypatch.setattr("bavit.app.latency.REFRESH_S", float("inf"))
    predictor = Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=str(apphelpers.tiny_yolos_dir(confident=True)),
                          backend="torch")
    explorer = Explorer(predictor)
    assert explorer.monitor.start().join(120)
    handlers = build_handlers(explorer)
    outputs = handlers.page_image({"path": str(CHELSEA), "orig_name": "chelsea.jpg"}, None,
                                  MODE_TOPK, 0.5, 35, 3, True, False)
    session = outputs[0]
    view = json.loads(outputs[1])["view"]
    job = session.job
    assert view["job"]["id"] == job.id and (job.ladder.mode, job.ladder.cca_steps) == (MODE_TOPK, 3)
    start = job.ladder.index(Controls(mode=MODE_TOPK, target_sparsity=35))
    assert job.results[job.ladder.rungs[start].mask]["detections"] == view["detections"]  # the event's own rung
    sent = {}
    for _ in range(600):  # the page's timer, with the page's ack of what it holds
        ack = json.dumps({"job": job.id, "masks": [int(mask) for mask in sent]})
        state, _, _, timer = handlers.page_latency(session, MODE_TOPK, 0.5, 35, 3, True, False, ack)
        if isinstance(state, str):
            message = json.loads(state)
            assert message["kind"] == "rungs" and message["job"]["id"] == job.id
            assert not set(message["results"]) & set(sent)  # only what the page lacks
            sent.update(message["results"])
        if isinstance(timer, gr.Timer):
            break  # switched off: every result sent
        threading.Event().wait(0.05)
    assert len(sent) == job.masks and job.complete  # every keep mask once, the event's own too
    lost = json.dumps({"job": job.id, "masks": [int(mask) for mask in list(sent)[2:]]})  # two messages lost
    resent = json.loads(handlers.page_latency(session, MODE_TOPK, 0.5, 35, 3, True, False, lost)[0])
    assert set(resent["results"]) == set(list(sent)[:2])
    for rung in job.ladder.rungs[::17]:
        expected = rung_result(explorer.render(session, rung.controls, RUNG_KEYS, app=False))
        result = job.results[rung.mask]
        assert result["detections"] == expected["detections"] and len(result["detections"]) == 10
        assert result["message"] == expected["message"]
    # a new CCA setting: a new ladder, the old one stopped
    handlers.page_slider(session, MODE_TOPK, 0.5, 35, 1, True, False)
    assert job.cancelled.is_set() and session.job is not job and session.job.ladder.cca_steps == 1
    explorer.ladders.stop()
    explorer.monitor.stop()
