"""A real browser (Playwright + Debian's chromium) against `python app.py`: upload, switch the sparsity control
between the calibrated mean sparsity (the default with a calibrated checkpoint), this image's top-k sparsity and the
threshold, drag the sliders, check the page updates consistently; a second browser context checks that sessions are
isolated.

Slider moves are answered in the page from the ladders the server sends (bavit/app/ladder.py): the grids and texts
the page shows are checked against the Python ones (the Predictor, bavit.app.page), string for string, with no
request sent; with the detector on, the page's detections from the detection ladder are checked against the
server's for the same setting.

Saves a screenshot to a temp dir (README's is made by ``python -m benchmarks.screenshot``, on the settled app).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import apphelpers
import numpy as np
import pytest

if not Path(apphelpers.CHROMIUM).exists():
    pytest.skip(f"{apphelpers.CHROMIUM} not found (install Debian's chromium: apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

from bavit.pruning.settings import PruningSettings  # noqa: E402  (after the skips)

SHIPPED = apphelpers.ROOT / "checkpoints" / "bavit-small-coco.safetensors"


def _shipped_tokens() -> int:
    """BAViT's tokens per image in the shipped model (its grid squared): the page's texts count them."""
    from safetensors import safe_open

    from bavit.core.checkpoint import CONFIG_KEY
    from bavit.core.config import BAViTConfig

    with safe_open(SHIPPED, "pt") as handle:
        return BAViTConfig.from_json(handle.metadata()[CONFIG_KEY]).num_tokens


TOKENS = _shipped_tokens()
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    # The shipped checkpoint makes a meaningful screenshot; the test only asserts structure, so a random one works too.
    # A copy calibrated on the gallery images, so the calibrated mode is offered (and is the default).
    if SHIPPED.is_file():
        return apphelpers.calibrated_checkpoint(SHIPPED, "bavit-shipped-calibrated")
    return apphelpers.calibrated_bavit_checkpoint()


@pytest.fixture(scope="module")
def predictor(checkpoint):
    """The server's checkpoint in-process: the reference for the page's numbers."""
    from bavit.predictor import Predictor

    return Predictor(bavit=checkpoint, detector=None)


@pytest.fixture(scope="module")
def server(checkpoint):
    return apphelpers.shared_server(bavit=checkpoint)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=apphelpers.CHROMIUM, args=apphelpers.CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#input-image input[type=file]", state="attached")
    return page


def upload(page, path: Path) -> str:
    page.locator("#input-image input[type=file]").set_input_files(str(path))
    page.wait_for_function("document.querySelector('#sparsity').innerText.includes('Sparsity:')")
    page.wait_for_selector("#grid-raw.bavit-loaded canvas")
    page.wait_for_selector("#curve.bavit-loaded canvas")
    return page.inner_text("#sparsity")


def drag_threshold(page, start: float, stop: float, elem_id: str = "threshold") -> float:
    """Drag a slider (the threshold by default) with the mouse from ``start`` to ``stop`` (fractions of its width)."""
    track = page.locator(f"#{elem_id} input[type=range]")
    track.scroll_into_view_if_needed()  # the mouse acts on the viewport: a slider scrolled out of it takes no drag
    box = track.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * start, y)
    page.mouse.down()
    steps = 4
    for i in range(1, steps + 1):
        page.mouse.move(box["x"] + box["width"] * (start + (stop - start) * i / steps), y)
    page.mouse.up()
    return float(page.locator(f"#{elem_id} input[type=number]").input_value())


def wait_for_threshold(page, value: float) -> str:
    page.wait_for_function(
        "t => document.querySelector('#sparsity').innerText.includes('threshold ' + t)", arg=f"{value:.2f}"
    )
    return page.inner_text("#sparsity")


MODE_MARKERS = ("Mean sparsity", "held at the target")  # what the calibrated / top-k panels say (threshold: neither)


def choose_mode(page, mode: str, phrase: str) -> str:
    """Click a sparsity control in the mode Radio; wait for the sparsity panel to show ``phrase`` and no other
    mode's marker."""
    page.locator("#mode label").filter(has_text=mode).click()
    others = [marker for marker in MODE_MARKERS if marker not in phrase]
    page.wait_for_function(
        "([p, others]) => { const t = document.querySelector('#sparsity').innerText;"
        " return t.includes(p) && !others.some(o => t.includes(o)); }", arg=[phrase, others])
    return page.inner_text("#sparsity")


def selected_mode(page) -> str:
    return page.locator("#mode label.selected").inner_text().strip()


def own_sparsity(text: str) -> float:
    """This image's sparsity as the panel states it next to the target ("this image: X%")."""
    match = re.search(r"this image: ([\d.]+)%", text)
    assert match, text
    return float(match.group(1))


def figure(page, elem_id: str) -> dict[str, str]:
    """A browser-drawn figure's data attributes (grids: ``bits``, ``kept``, ``source``; curve: ``cca``,
    ``threshold``)."""
    return page.evaluate("id => ({...document.getElementById(id).dataset})", elem_id)


def pixels(page, elem_id: str) -> bytes:
    """The canvas of a browser-drawn figure as a PNG."""
    return page.locator(f"#{elem_id} canvas").screenshot()


def token_table(page) -> dict[str, float]:
    rows = page.locator("#tokens table tr").all_inner_texts()
    values = {}
    for row in rows[1:]:
        label, value = row.split("\t")[:2]
        values[label.strip()] = value.strip()
    return values


def parse_sparsity(text: str) -> tuple[float, int, int]:
    match = re.search(r"Sparsity: ([\d.]+)%.*?(\d+) of 1024 YOLOS patches pruned, (\d+) kept", text, re.S)
    assert match, text
    return float(match.group(1)), int(match.group(2)), int(match.group(3))


def check_consistent(page, sparsity_text: str) -> None:
    """The token table (paper Table 2 form) agrees with the sparsity panel."""
    percent, pruned, kept = parse_sparsity(sparsity_text)
    assert pruned + kept == 1024
    assert percent == pytest.approx(100.0 * pruned / 1024, abs=0.05)
    table = token_table(page)
    assert table[f"BAViT ({TOKENS} × 2 layers)"] == str(2 * TOKENS)
    assert table["YOLOS dense (1024 × 12 layers)"] == "12288"
    assert table[f"YOLOS pruned ({kept} kept × 12 layers)"] == str(12 * kept)
    assert table["Total (BAViT + YOLOS pruned)"] == str(2 * TOKENS + 12 * kept)
    reduction = float(table["Reduction vs dense (Eq. 4)"].rstrip("%"))
    assert reduction == pytest.approx((12288 - 2 * TOKENS - 12 * kept) / 12288 * 100, abs=0.006)


def test_upload_drag_threshold_and_screenshot(server, browser, predictor, tmp_path):
    from bavit.app.session import MODE_SPARSITY, MODE_THRESHOLD

    page = open_page(browser, server.url)
    # No detector weights here: the banner and the detection panel say so instead of drawing boxes.
    assert "no detector weights" in page.inner_text("#banner").lower()
    # A calibrated checkpoint: the page opens in the calibrated mean-sparsity mode, target slider shown
    assert selected_mode(page) == MODE_SPARSITY
    assert page.locator("#target-sparsity").is_visible() and not page.locator("#threshold").is_visible()
    calibrated = upload(page, apphelpers.EXAMPLES / "chelsea.jpg")
    expected = predictor.analyze(apphelpers.EXAMPLES / "chelsea.jpg", PruningSettings(sparsity=0.35, cca_steps=3), detect=False)
    threshold = predictor.calibration.threshold(0.35, 3)
    assert "Mean sparsity 35% over images" in calibrated and f"threshold {threshold:.2f}" in calibrated
    assert own_sparsity(calibrated) == pytest.approx(100 * expected.accounting.sparsity, abs=0.05)
    assert own_sparsity(calibrated) == parse_sparsity(calibrated)[0]  # the heading is this image's sparsity
    assert f"{int(expected.keep_mask.sum())} kept" in calibrated
    check_consistent(page, calibrated)

    before = choose_mode(page, MODE_THRESHOLD, "threshold 0.50")
    assert page.locator("#threshold").is_visible() and not page.locator("#target-sparsity").is_visible()
    assert "Mean sparsity" not in before
    assert "no detector weights" in page.inner_text("#detections").lower()
    assert figure(page, "detections-pruned") == {} and page.locator("#detections-pruned").is_hidden()
    assert "random init" in page.inner_text("#latency")
    check_consistent(page, before)
    raw_before, cca_before = figure(page, "grid-raw"), figure(page, "grid-cca")
    pixels_before = pixels(page, "grid-raw")

    value = drag_threshold(page, 0.5, 0.8)
    assert value > 0.7
    after = wait_for_threshold(page, value)
    assert after != before
    assert parse_sparsity(after)[1] >= parse_sparsity(before)[1]  # a higher threshold keeps no more patches
    raw_after, cca_after = figure(page, "grid-raw"), figure(page, "grid-cca")
    assert raw_after["bits"] != raw_before["bits"] and cca_after["bits"] != cca_before["bits"]
    assert raw_after["bits"].count("1") < raw_before["bits"].count("1")
    assert pixels(page, "grid-raw") != pixels_before
    assert figure(page, "curve")["threshold"] == str(value)  # the curve's marker moved with it
    check_consistent(page, after)

    # paint a GT with the brush in the ImageEditor and compare it with the prediction
    page.locator("#gt-paint button").first.click()
    page.locator("#gt-editor button[aria-label=Brush]").click()
    canvas = page.locator("#gt-editor canvas").first.bounding_box()
    cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
    page.mouse.move(cx - 60, cy - 20)
    page.mouse.down()
    for dy in (-20, 0, 20):
        page.mouse.move(cx + 60, cy + dy, steps=4)
        page.mouse.move(cx - 60, cy + dy, steps=4)
    page.mouse.up()
    page.locator("#gt-apply").click()
    page.wait_for_function("document.querySelector('#gt-stats').innerText.includes('painted in the editor')")
    painted = int(re.search(rf"(\d+) of {TOKENS} tokens FG", page.inner_text("#gt-stats")).group(1))
    assert 0 < painted < TOKENS
    assert "FG recall" in page.inner_text("#gt-stats")
    assert page.locator("#gt-grid img").count() == 1 and page.locator("#gt-confusion img").count() == 1
    page.locator("#gt-paint button").first.click()  # fold the editor away for the screenshot
    page.mouse.move(0, 0)

    shot = tmp_path / "bavit-explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # with GT the comparison follows the grid: grid-only slider moves go to the server, which updates it too
    assert page.evaluate("() => window.bavitGrid.state.gt") is True
    page.locator("#run-detector input[type=checkbox]").uncheck()
    page.wait_for_function("document.querySelector('#latency').innerText.includes('Detector off')")
    stats = page.inner_text("#gt-stats")
    local = page.evaluate("() => window.bavitGrid.state.localChanges")
    value = drag_threshold(page, 0.8, 0.2)
    wait_for_threshold(page, value)
    assert figure(page, "grid-cca")["source"] == "server"
    assert page.evaluate("() => window.bavitGrid.state.localChanges") == local
    page.wait_for_function("s => document.querySelector('#gt-stats').innerText !== s", arg=stats)
    page.context.close()


def test_two_sessions_do_not_share_images(server, browser, predictor):
    from bavit.app.session import MODE_THRESHOLD

    first, second = open_page(browser, server.url), open_page(browser, server.url)
    for page in (first, second):  # grid-only updates keep this test quick
        page.locator("#run-detector input[type=checkbox]").uncheck()
    upload(first, apphelpers.EXAMPLES / "coffee.jpg")
    upload(second, apphelpers.EXAMPLES / "rocket.jpg")
    for page in (first, second):
        choose_mode(page, MODE_THRESHOLD, "threshold 0.50")
    texts = {}
    for name, page in (("coffee", first), ("rocket", second)):
        value = drag_threshold(page, 0.5, 0.3)
        texts[name] = (value, wait_for_threshold(page, value))
    # each page's numbers are those of its own image at its own threshold (the library as reference)
    for name, (value, text) in texts.items():
        expected = predictor.analyze(apphelpers.EXAMPLES / f"{name}.jpg", PruningSettings(threshold=value, cca_steps=3), detect=False)
        assert f"{int(expected.keep_mask.sum())} kept" in text, name
        assert f"BAViT FG tokens: {int(expected.grid_raw.sum())} of {TOKENS}" in text, name
    first.context.close()
    second.context.close()


def test_target_slider_in_both_sparsity_modes(server, browser, predictor):
    """Calibrated mode: the target is the mean over images and the page states this image's own sparsity; top-k
    mode holds this image at the target; the same slider drives both."""
    from bavit.app.session import MODE_SPARSITY, MODE_THRESHOLD, MODE_TOPK

    path = apphelpers.EXAMPLES / "astronaut.jpg"
    page = open_page(browser, server.url)
    page.locator("#run-detector input[type=checkbox]").uncheck()
    upload(page, path)
    target = round(drag_threshold(page, 0.37, 0.55, elem_id="target-sparsity"))
    assert 40 <= target <= 60
    page.wait_for_function(
        "t => document.querySelector('#sparsity').innerText.includes('Mean sparsity ' + t + '%')", arg=str(target))
    text = page.inner_text("#sparsity")
    expected = predictor.analyze(path, PruningSettings(sparsity=target / 100, cca_steps=3), detect=False)
    assert own_sparsity(text) == pytest.approx(100 * expected.accounting.sparsity, abs=0.05)
    assert f"{int(expected.keep_mask.sum())} kept" in text
    check_consistent(page, text)

    # top-k: the same target, now held for this image (the count closest to it after CCA)
    text = choose_mode(page, MODE_TOPK, f"held at the target {target}%")
    assert page.locator("#target-sparsity").is_visible() and not page.locator("#threshold").is_visible()
    kept = int(predictor.analyze(path, PruningSettings(image_sparsity=target / 100, cca_steps=3),
                                 detect=False).keep_mask.sum())
    assert f"{kept} kept" in text
    assert own_sparsity(text) == pytest.approx(100 * (1024 - kept) / 1024, abs=0.05)
    check_consistent(page, text)

    # back to the calibrated mean, then the threshold: the threshold slider replaces the target slider
    choose_mode(page, MODE_SPARSITY, f"Mean sparsity {target}% over images")
    choose_mode(page, MODE_THRESHOLD, "threshold 0.50")
    assert page.locator("#threshold").is_visible() and not page.locator("#target-sparsity").is_visible()
    page.context.close()


# ---------------------------------------------------------------- grid.js: the page answers slider moves from ladders


@pytest.fixture(scope="module")
def explorer(predictor):
    from bavit.app.explorer import Explorer

    return Explorer(predictor, ladders=False)


def bits(grid) -> str:
    return "".join("1" if v else "0" for v in np.asarray(grid, dtype=bool).ravel())


def python_view(explorer, session, mode: str, value: float, cca_steps: int) -> dict:
    """What the server renders for these controls (grid-only): grid bits, kept count and the two texts."""
    from bavit.app.page import sparsity_text, tokens_table
    from bavit.app.session import MODE_THRESHOLD, Controls, effective_threshold

    controls = Controls(mode=mode, cca_steps=cca_steps, detect=False,
                        **({"threshold": value} if mode == MODE_THRESHOLD else {"target_sparsity": value}))
    analysis = explorer.analyze(session, controls)
    return {"raw": bits(analysis.grid_raw), "cca": bits(analysis.grid_cca), "kept": int(analysis.keep_mask.sum()),
            "sparsity": sparsity_text(analysis, controls, explorer.predictor.calibration),
            "tokens": tokens_table(analysis), "x": effective_threshold(analysis)}


def set_target(page, value: int, elem_id: str = "target-sparsity") -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def counters(page) -> dict:
    return page.evaluate("() => { const s = window.bavitGrid.state; return {local: s.localChanges,"
                         " detections: s.localDetections, asks: s.serverAsks, received: s.received}; }")


def test_grid_only_slider_is_answered_in_the_page(server, browser, explorer):
    """Detector off: target moves redraw both grids, the sparsity text and the token table from the grid ladder,
    the same as the server renders them, with no request; a CCA setting the page lacks asks the server once, which
    sends its ladder, and the page answers the next moves there itself."""
    from bavit.app.session import MODE_SPARSITY

    path = apphelpers.EXAMPLES / "astronaut.jpg"
    page = open_page(browser, server.url)
    page.locator("#run-detector input[type=checkbox]").uncheck()
    upload(page, path)
    page.wait_for_function("document.querySelector('#latency').innerText.includes('Detector off')")
    session = explorer.open_image({"path": str(path), "orig_name": path.name})
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    before = counters(page)
    for target in (20, 55, 80):
        set_target(page, target)
        page.wait_for_function(
            "t => document.querySelector('#sparsity').innerText.includes('Mean sparsity ' + t + '%')", arg=str(target))
        expected = python_view(explorer, session, MODE_SPARSITY, target, 3)
        for elem_id, key in (("grid-raw", "raw"), ("grid-cca", "cca")):
            assert figure(page, elem_id) == {"bits": expected[key], "kept": str(expected["kept"]), "source": "client"}
        assert page.evaluate("() => window.bavitGrid.state.last") == {"sparsity": expected["sparsity"],
                                                                      "tokens": expected["tokens"]}
        check_consistent(page, page.inner_text("#sparsity"))
        assert float(figure(page, "curve")["threshold"]) == expected["x"]
    assert counters(page)["local"] == before["local"] + 3 and counters(page)["asks"] == before["asks"]
    assert requests == []  # no round trip at all

    # CCA 1: no ladder here yet, so the server answers (and sends it); the next move is the page's again
    set_target(page, 1, elem_id="cca-steps")
    page.wait_for_function("() => document.querySelector('#sparsity').innerText.includes('CCA 1 steps')")
    page.wait_for_function("() => window.bavitGrid.state.ladders.has('Mean sparsity (calibrated)|1')")
    assert counters(page)["asks"] == before["asks"] + 1
    page.wait_for_function("() => document.querySelector('#curve').dataset.cca === '1'")
    asked = len(requests)
    set_target(page, 60)
    page.wait_for_function("() => document.querySelector('#sparsity').innerText.includes('Mean sparsity 60%')")
    expected = python_view(explorer, session, MODE_SPARSITY, 60, 1)
    assert figure(page, "grid-cca") == {"bits": expected["cca"], "kept": str(expected["kept"]), "source": "client"}
    assert page.evaluate("() => window.bavitGrid.state.last.sparsity") == expected["sparsity"]
    assert len(requests) == asked

    # removing the image clears the figures; a slider move then has nothing to draw
    page.locator("#input-image button[aria-label='Remove Image']").click()
    page.wait_for_function("() => window.bavitGrid.state.payload === null")
    assert figure(page, "grid-raw") == {} and page.locator("#grid-raw canvas").is_hidden()
    assert page.locator("#grid-raw .bavit-placeholder").is_visible()
    idle = page.evaluate("() => window.bavitGrid.state.idleMoves")
    set_target(page, 50)
    page.wait_for_function("n => window.bavitGrid.state.idleMoves > n", arg=idle)  # the move was handled
    assert figure(page, "grid-cca") == {} and page.inner_text("#sparsity") == ""
    page.context.close()


LADDER_DONE = """() => { const s = window.bavitGrid.state; const job = s.job;
  if (!job) return false;
  const ladder = s.ladders.get(job.mode + '|' + job.cca);
  return !!ladder && s.results.size >= new Set(ladder.rungs.filter(Boolean).map((r) => r[1])).size; }"""


@pytest.fixture(scope="module")
def detector_server(checkpoint):
    """The app with a detector that draws boxes (a tiny random YOLOS, confident: plumbing, not meaning)."""
    return apphelpers.shared_server(bavit=checkpoint, detector=apphelpers.tiny_yolos_dir(confident=True))


def test_detector_slider_is_answered_from_the_detection_ladder(detector_server, browser):
    """Detector on: the background computes the pruned detections at every keep mask of the slider; then a drag is
    answered in the page (detections, message and latency from the ladder, no round trip), and those detections are
    the ones the server draws for the same setting."""
    page = open_page(browser, detector_server.url)
    upload(page, apphelpers.EXAMPLES / "chelsea.jpg")  # the detector is on by default
    page.wait_for_function("() => document.querySelector('#detections-pruned').dataset.source === 'server'")
    page.wait_for_function(LADDER_DONE)
    before = counters(page)
    requests = []
    page.on("request", lambda request: requests.append(request.url) if "/queue/join" in request.url else None)
    value = round(drag_threshold(page, 0.37, 0.6, elem_id="target-sparsity"))
    page.wait_for_function(
        "t => document.querySelector('#sparsity').innerText.includes('Mean sparsity ' + t + '%')", arg=str(value))
    after = counters(page)
    assert after["local"] > before["local"] and after["detections"] == after["local"] - before["local"] + \
        before["detections"]
    assert after["asks"] == before["asks"] and requests == []  # every move of the drag answered in the page
    local = figure(page, "detections-pruned")
    assert local["source"] == "client" and len(json.loads(local["marks"])) > 0
    local_message = page.inner_text("#detections-message")
    assert "detections from the pruned YOLOS" in local_message and "YOLOS pruned" in page.inner_text("#latency")

    # the server's answer for the same setting draws the same detections
    page.evaluate("() => document.getElementById('server-update').click()")
    page.wait_for_function("() => document.querySelector('#detections-pruned').dataset.source === 'server'")
    assert figure(page, "detections-pruned")["marks"] == local["marks"]
    # the same message, once Gradio's progress timer ("0.0s") of an event still pending is gone from the panel
    page.wait_for_function("m => document.querySelector('#detections-message').innerText === m", arg=local_message)

    # a new CCA setting is a new ladder: the old one's detections are dropped, the new one's computed
    job = page.evaluate("() => window.bavitGrid.state.job.id")
    set_target(page, 1, elem_id="cca-steps")
    page.wait_for_function("j => window.bavitGrid.state.job && window.bavitGrid.state.job.id !== j", arg=job)
    assert page.evaluate("() => window.bavitGrid.state.job.cca") == 1
    page.wait_for_function(LADDER_DONE)
    page.context.close()
