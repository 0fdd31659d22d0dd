"""A real browser (Playwright + Debian's chromium) against `python app.py`: upload, switch the sparsity control
between the calibrated mean sparsity (the default with a calibrated checkpoint), this image's top-k sparsity and the
threshold, drag the sliders, check the page updates consistently; a second browser context checks that sessions are
isolated.

Saves a screenshot to a temp dir; with BAVIT_UPDATE_SCREENSHOT=1 it also becomes assets/screenshot.png (the README's).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import apphelpers
import pytest

if not Path(apphelpers.CHROMIUM).exists():
    pytest.skip(f"{apphelpers.CHROMIUM} not found (install Debian's chromium: apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

SHIPPED = apphelpers.ROOT / "checkpoints" / "bavit-small-coco.safetensors"
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
    page.wait_for_selector("#grid-raw img")
    return page.inner_text("#sparsity")


def drag_threshold(page, start: float, stop: float, elem_id: str = "threshold") -> float:
    """Drag a slider (the threshold by default) with the mouse from ``start`` to ``stop`` (fractions of its width)."""
    track = page.locator(f"#{elem_id} input[type=range]")
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


def src(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} img").get_attribute("src")


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
    assert table["BAViT (576 × 2 layers)"] == "1152"
    assert table["YOLOS dense (1024 × 12 layers)"] == "12288"
    assert table[f"YOLOS pruned ({kept} kept × 12 layers)"] == str(12 * kept)
    assert table["Total (BAViT + YOLOS pruned)"] == str(1152 + 12 * kept)
    reduction = float(table["Reduction vs dense (Eq. 4)"].rstrip("%"))
    assert reduction == pytest.approx((12288 - 1152 - 12 * kept) / 12288 * 100, abs=0.006)


def test_upload_drag_threshold_and_screenshot(server, browser, predictor, tmp_path):
    from bavit.app.explorer import MODE_SPARSITY, MODE_THRESHOLD

    page = open_page(browser, server.url)
    # No detector weights here: the banner and the detection panel say so instead of drawing boxes.
    assert "no detector weights" in page.inner_text("#banner").lower()
    # A calibrated checkpoint: the page opens in the calibrated mean-sparsity mode, target slider shown
    assert selected_mode(page) == MODE_SPARSITY
    assert page.locator("#target-sparsity").is_visible() and not page.locator("#threshold").is_visible()
    calibrated = upload(page, apphelpers.EXAMPLES / "chelsea.jpg")
    expected = predictor.analyze(apphelpers.EXAMPLES / "chelsea.jpg", sparsity=0.35, cca_steps=3, detect=False)
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
    assert page.locator("#detections img").count() == 0
    assert "random init" in page.inner_text("#latency")
    check_consistent(page, before)
    raw_before, cca_before = src(page, "grid-raw"), src(page, "grid-cca")

    value = drag_threshold(page, 0.5, 0.8)
    assert value > 0.7
    after = wait_for_threshold(page, value)
    assert after != before
    assert parse_sparsity(after)[1] >= parse_sparsity(before)[1]  # a higher threshold keeps no more patches
    page.wait_for_function(f"document.querySelector('#grid-raw img').src !== {raw_before!r}")
    assert src(page, "grid-raw") != raw_before and src(page, "grid-cca") != cca_before
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
    painted = int(re.search(r"(\d+) of 576 tokens FG", page.inner_text("#gt-stats")).group(1))
    assert 0 < painted < 576
    assert "FG recall" in page.inner_text("#gt-stats")
    assert page.locator("#gt-grid img").count() == 1 and page.locator("#gt-confusion img").count() == 1
    page.locator("#gt-paint button").first.click()  # fold the editor away for the screenshot
    page.mouse.move(0, 0)

    shot = tmp_path / "bavit-explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("BAVIT_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, apphelpers.ROOT / "assets" / "screenshot.png")
    page.context.close()


def test_two_sessions_do_not_share_images(server, browser, predictor):
    from bavit.app.explorer import MODE_THRESHOLD

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
        expected = predictor.analyze(apphelpers.EXAMPLES / f"{name}.jpg", threshold=value, cca_steps=3, detect=False)
        assert f"{int(expected.keep_mask.sum())} kept" in text, name
        assert f"BAViT FG tokens: {int(expected.grid_raw.sum())} of 576" in text, name
    first.context.close()
    second.context.close()


def test_target_slider_in_both_sparsity_modes(server, browser, predictor):
    """Calibrated mode: the target is the mean over images and the page states this image's own sparsity; top-k
    mode holds this image at the target; the same slider drives both."""
    import torch

    from bavit.app.explorer import MODE_SPARSITY, MODE_THRESHOLD, MODE_TOPK
    from bavit.pruning.keep_mask import keep_ratio_for_count

    path = apphelpers.EXAMPLES / "astronaut.jpg"
    page = open_page(browser, server.url)
    page.locator("#run-detector input[type=checkbox]").uncheck()
    upload(page, path)
    target = round(drag_threshold(page, 0.37, 0.55, elem_id="target-sparsity"))
    assert 40 <= target <= 60
    page.wait_for_function(
        "t => document.querySelector('#sparsity').innerText.includes('Mean sparsity ' + t + '%')", arg=str(target))
    text = page.inner_text("#sparsity")
    expected = predictor.analyze(path, sparsity=target / 100, cca_steps=3, detect=False)
    assert own_sparsity(text) == pytest.approx(100 * expected.accounting.sparsity, abs=0.05)
    assert f"{int(expected.keep_mask.sum())} kept" in text
    check_consistent(page, text)

    # top-k: the same target, now held for this image (the count closest to it after CCA)
    text = choose_mode(page, MODE_TOPK, f"held at the target {target}%")
    assert page.locator("#target-sparsity").is_visible() and not page.locator("#threshold").is_visible()
    prepared = predictor.set_image(path)
    ratio = keep_ratio_for_count(torch.from_numpy(prepared.fg_prob.copy()), round(1024 * (1 - target / 100)), 32, 3)
    kept = int(predictor.predict(prepared, keep_ratio=ratio, cca_steps=3, detect=False).keep_mask.sum())
    assert f"{kept} kept" in text
    assert own_sparsity(text) == pytest.approx(100 * (1024 - kept) / 1024, abs=0.05)
    check_consistent(page, text)

    # back to the calibrated mean, then the threshold: the threshold slider replaces the target slider
    choose_mode(page, MODE_SPARSITY, f"Mean sparsity {target}% over images")
    choose_mode(page, MODE_THRESHOLD, "threshold 0.50")
    assert page.locator("#threshold").is_visible() and not page.locator("#target-sparsity").is_visible()
    page.context.close()
