"""Slider latency in a real browser: ``python -m benchmarks.browser_bench [--changes N] [--chromium PATH] ...``
(:func:`main`; the options of :mod:`.app_bench` but ``--bench-repeats``, and ``--chromium``).

Starts ``python app.py`` on a free port (:func:`.app_process.running_app`), waits for its background latency
warm-up to finish, opens it in Debian's chromium through Playwright, uploads ``--image`` and times ``--changes``
slider changes in the page's default sparsity mode (the calibrated mean sparsity with the shipped checkpoint: the
target slider), first grid-only (detector unticked), then with the pruned detector. One change: type a value in the
slider's number box and press Enter, then wait until the sparsity text shows it (with the detector: and the latency
panel shows the pruned detector at its kept count). Its time runs from the number box's ``input`` event to that DOM
mutation, both taken in the page with ``performance.now()`` (so Playwright's own round trips are not counted).
Changes are answered in the page from the ladders (``bavit/app/static/grid.js``, :mod:`bavit.app.ladder`); with the
detector, once its ladder has every keep mask, and also while it runs (a new image, moved at once: a position not
computed yet is a server round trip). The first two changes of each mode warm up and are not timed.

The same app's ``gradio_client`` round trips (:func:`.app_bench.time_changes`: the ``page_slider`` event,
threshold mode, all view images) are measured afterwards as a second line.

Targets (reported, not asserted; medians): grid-only <= 50 ms, with the pruned detector and its ladder done <= 60 ms,
while the ladder runs <= 250 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bavit.app.ladder import COARSE_STEPS
from bavit.app.session import MODE_THRESHOLD, MODE_TOPK
from bavit.cli import run_script
from bavit.files import write_text

from .app_bench import add_app_arguments, summary, time_changes
from .app_process import running_app

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium (apt-get install chromium), as tests/test_app_browser.py
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic"]
TARGETS_MS = {"grid_only": 50.0, "with_detector": 60.0, "during_ladder": 250.0}
WARMUP = 2  # changes per mode that are not timed
TIMEOUT_MS = 120_000
WARM_UP_TIMEOUT_S = 600.0  # the app's background latency warm-up must be done before anything is timed

# In the page: the time from the slider's number box `input` event to the sparsity panel showing the expected text.
_INSTALL_TIMER = """() => {
  const timer = window.__bavitBench = {slider: null, expect: null, start: null, end: null};
  document.addEventListener("input", (event) => {
    if (timer.expect !== null && timer.start === null && event.target.closest(timer.slider)) {
      timer.start = performance.now();
    }
  }, true);
  const panel = document.querySelector("#sparsity"), latency = document.querySelector("#latency");
  const done = () => {
    if (timer.start === null || timer.end !== null || !panel.innerText.includes(timer.expect)) return;
    if (timer.detector) {  // and the latency panel is the one of this position's kept count
      const kept = /(\\d+) kept \\(/.exec(panel.innerText);
      if (!kept || !latency.innerText.includes(`YOLOS pruned, ${kept[1]} kept`)) return;
    }
    timer.end = performance.now();
  };
  for (const element of [panel, latency]) {
    new MutationObserver(done).observe(element, {subtree: true, childList: true, characterData: true});
  }
}"""
_ARM_TIMER = ("([slider, expect, detector]) => Object.assign(window.__bavitBench, {slider, expect, detector, "
              "start: null, end: null})")
# In the page: every keep mask of the shown ladder has its detections (bavit/app/static/grid.js state).
LADDER_DONE = """() => { const s = window.bavitGrid.state; const job = s.job;
  if (!job) return false;
  const ladder = s.ladders.get(job.mode + '|' + job.cca);
  return !!ladder && s.results.size >= new Set(ladder.rungs.filter(Boolean).map((r) => r[1])).size; }"""

# ... and at every position in steps of 0.05 (thresholds) or of 5 points (target sparsities)
# (the positions the detection ladder computes first: ladder.COARSE_STEPS)
COARSE_DONE = """() => { const s = window.bavitGrid.state; const job = s.job;
  if (!job) return false;
  const ladder = s.ladders.get(job.mode + '|' + job.cca);
  return !!ladder && ladder.rungs.every((r, i) => !r || i %% %d !== 0 || s.results.has(r[1])); }""" % COARSE_STEPS


def _messages(page) -> int:
    """Server messages the page has applied so far (grid.js)."""
    return int(page.evaluate("() => window.bavitGrid.state.received"))


def _wait_for_server(page, before: int) -> None:
    page.wait_for_function("n => window.bavitGrid.state.received > n", arg=before)


def _slider(page) -> tuple[str, str]:
    """The slider of the page's current mode and what the sparsity panel says for its value: ``(elem_id, format)``."""
    text = page.inner_text("#sparsity")
    if "Mean sparsity" in text:
        return "target-sparsity", "Mean sparsity {value}% over images"
    if "held at the target" in text:
        return "target-sparsity", "held at the target {value}%"
    return "threshold", "threshold {value}"


def _values(elem_id: str, start: int, count: int) -> list[str]:
    """Slider values number ``start`` to ``start + count - 1`` of a cycle where each differs from the one before
    (the first, 30% or 0.30, from the page's defaults, 35% and 0.50)."""
    if elem_id == "threshold":
        return [f"{0.30 + 0.05 * (i % 9):.2f}" for i in range(start, start + count)]
    return [str(30 + 5 * (i % 9)) for i in range(start, start + count)]


def time_slider(page, changes: int, start: int = 0, detector: bool = False, warmup: int = WARMUP) -> list[float]:
    """ms per slider change in the page's current mode (after ``warmup`` untimed ones), using the slider values
    from number ``start`` of :func:`_values`' cycle; with ``detector`` a change is done once the latency panel shows
    the pruned detector at its kept count too."""
    elem_id, phrase = _slider(page)
    box = page.locator(f"#{elem_id} input[type=number]")
    timings = []
    for i, value in enumerate(_values(elem_id, start, changes + warmup)):
        page.evaluate(_ARM_TIMER, [f"#{elem_id}", phrase.format(value=value), detector])
        box.fill(value)
        box.press("Enter")
        page.wait_for_function("() => window.__bavitBench.end !== null")
        if i >= warmup:
            timings.append(page.evaluate("() => window.__bavitBench.end - window.__bavitBench.start"))
    return timings


def set_detector(page, on: bool) -> None:
    """Tick or untick *Run detector* and wait for the server's answer."""
    checkbox = page.locator("#run-detector input[type=checkbox]")
    if checkbox.is_checked() == on:
        return
    before = _messages(page)
    checkbox.set_checked(on)
    _wait_for_server(page, before)


@contextmanager
def chromium_browser(chromium: str = CHROMIUM) -> Iterator:
    """Debian's chromium, launched by Playwright; closed on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_app(browser, url: str):
    """A 1400x1000 page of ``browser`` on the app at ``url``, its upload input and script ready."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#input-image input[type=file]", state="attached")
    page.wait_for_function("() => window.bavitGrid !== undefined")
    return page


@contextmanager
def app_page(url: str, chromium: str = CHROMIUM) -> Iterator:
    """Debian's chromium on the app at ``url`` (:func:`open_app`); the browser is closed on the way out."""
    with chromium_browser(chromium) as browser:
        yield open_app(browser, url)


def browser_timings(url: str, image: Path, changes: int, chromium: str = CHROMIUM, client=None) -> dict:
    """Open ``url`` in chromium, upload ``image`` and time the slider grid-only, then with the detector (and with
    ``client``, another session's latency while a ladder runs: :func:`other_session`)."""
    with app_page(url, chromium) as page:
        before = _messages(page)
        page.locator("#input-image input[type=file]").set_input_files(str(image))
        _wait_for_server(page, before)
        page.wait_for_function("() => document.querySelector('#sparsity').innerText.includes('Sparsity:')")
        page.evaluate(_INSTALL_TIMER)
        mode = page.locator("#mode label.selected").inner_text().strip()
        set_detector(page, False)
        local_before = page.evaluate("() => window.bavitGrid.state.localChanges")
        grid_only = time_slider(page, changes)
        local = page.evaluate("() => window.bavitGrid.state.localChanges") - local_before
        started = time.perf_counter()
        set_detector(page, True)
        page.wait_for_function(COARSE_DONE, polling=50)
        coarse_s = time.perf_counter() - started
        page.wait_for_function(LADDER_DONE, polling=50)
        quiet_s = time.perf_counter() - started  # the ladder with nothing else to do, from the detector's tick
        asks_before = page.evaluate("() => window.bavitGrid.state.serverAsks")
        with_detector = time_slider(page, changes, start=changes + WARMUP, detector=True)
        asks = page.evaluate("() => window.bavitGrid.state.serverAsks") - asks_before
        latency_text = page.inner_text("#latency")
        # the same while the detection ladder runs: a new image, then at once the slider; and how long the ladder
        # of the default mode takes from the image's arrival to its last keep mask
        during, ladder_s, masks = ladder_timings(page, image, changes)
        # The same with this image *held* at the slider's sparsity (top-k): in the default, calibrated mode an
        # object-filled photo keeps nearly every patch, so the detector there runs almost dense.
        before = _messages(page)
        page.locator("#mode label", has_text=MODE_TOPK).click()
        _wait_for_server(page, before)
        page.evaluate(_INSTALL_TIMER)  # the mode event may re-render the sparsity panel the timer watched
        page.wait_for_function(LADDER_DONE)
        with_detector_topk = time_slider(page, changes, start=2 * (changes + WARMUP), detector=True)
        others = None if client is None else other_session(page, client, image)
    return {"other_session": others, "mode": mode, "grid_only": summary(grid_only), "with_detector": summary(with_detector),
            "with_detector_asks": asks, "with_detector_topk": summary(with_detector_topk),
            "during_ladder": summary(during), "ladder_s": ladder_s, "ladder_masks": masks, "quiet_ladder_s": quiet_s,
            "coarse_ladder_s": coarse_s,
            "grid_only_in_page": local, "latency_panel": latency_text}


def other_session(page, client, image: Path, calls: int = 8) -> dict:
    """Another session's ``analyze`` calls (``gradio_client``, the detector on) with nothing else running, then
    while this page's detection ladder runs (the image uploaded again: a new session, a new ladder): ms each."""
    from gradio_client import handle_file

    def timed() -> float:
        start = time.perf_counter()
        client.predict(handle_file(str(image)), 0.5, 3, 0, api_name="/analyze")
        return (time.perf_counter() - start) * 1000.0

    timed()
    idle = [timed() for _ in range(calls)]
    page.locator("#input-image button[aria-label='Remove Image']").click()
    page.wait_for_function("() => window.bavitGrid.state.payload === null")
    before = _messages(page)
    page.locator("#input-image input[type=file]").set_input_files(str(image))
    _wait_for_server(page, before)
    during = []
    while len(during) < calls and not page.evaluate(LADDER_DONE):
        during.append(timed())
    return {"idle": summary(idle), "during_ladder": summary(during) if during else None,
            "ratio": (summary(during)["median_ms"] / summary(idle)["median_ms"]) if during else None}


def ladder_timings(page, image: Path, changes: int) -> tuple[list[float], float, int]:
    """Upload ``image`` again (as a new image: the previous one removed first), time ``changes`` slider moves with
    the detector at once, while its detection ladder runs; then ``(ms per move, s from the image's arrival in the
    page to the ladder's last keep mask, keep masks)``."""
    page.locator("#input-image button[aria-label='Remove Image']").click()
    page.wait_for_function("() => window.bavitGrid.state.payload === null")
    before = _messages(page)
    page.locator("#input-image input[type=file]").set_input_files(str(image))
    _wait_for_server(page, before)
    page.wait_for_function("() => window.bavitGrid.state.job !== null")
    arrived = time.perf_counter()
    page.evaluate(_INSTALL_TIMER)
    during = time_slider(page, changes, start=3, detector=True, warmup=0)
    page.wait_for_function(LADDER_DONE, polling=50)
    seconds = time.perf_counter() - arrived
    masks = page.evaluate("() => window.bavitGrid.state.results.size")
    return during, seconds, masks


def wait_for_warm_up(client, image: Path, timeout: float = WARM_UP_TIMEOUT_S) -> dict:
    """Poll the app's ``analyze`` API (once a second) until its background latency warm-up is done, so that it does
    not share the CPU with the timed changes; returns the last answer."""
    from gradio_client import handle_file

    deadline = time.monotonic() + timeout
    while True:
        info = client.predict(handle_file(str(image)), 0.5, 3, 0, api_name="/analyze")
        if not (info.get("latency_ms") or {}).get("warming_up") or time.monotonic() > deadline:
            return info
        time.sleep(1.0)


def client_timings(client, image: Path, changes: int) -> dict:
    """The same app through ``gradio_client`` (``page_slider``, threshold mode), as :mod:`.app_bench` measures it."""
    from gradio_client import handle_file

    client.predict(handle_file(str(image)), MODE_THRESHOLD, 0.5, 35, 3, True, False, api_name="/page_image")
    return {"grid_only": summary(time_changes(client, changes, detect=False)),
            "with_detector": summary(time_changes(client, changes, detect=True))}


def run_browser(image: str | os.PathLike, changes: int, threads: int, bavit: str | None = None,
                detector: str | None = None, backend: str | None = None, chromium: str = CHROMIUM) -> dict:
    """Start the app (torch on ``threads`` threads, ``bavit``, ``detector`` and ``backend`` as ``app.py`` takes them,
    None for its defaults), time ``changes`` slider changes on ``image`` in ``chromium``, then through
    ``gradio_client``; the app is stopped on return."""
    if changes < 1:
        raise SystemExit("error: --changes must be >= 1")
    if not Path(chromium).exists():
        raise SystemExit(f"error: no browser at {chromium} (install Debian's chromium: apt-get install chromium)")
    from gradio_client import Client

    image = Path(image)
    with running_app(threads, bavit, detector, backend, stop_timeout=20) as (_process, url, _log):
        client = Client(url, download_files=False, verbose=False)
        info = wait_for_warm_up(client, image)
        results = {"threads": threads, "image": str(image), "changes": changes,
                   "latency_note": info["latency_note"], "detector_status": info["detector_status"],
                   "browser": browser_timings(url, image, changes, chromium, client)}
        results["gradio_client"] = client_timings(client, image, changes)
    results["targets_ms"] = dict(TARGETS_MS)
    results["load_average"] = os.getloadavg()
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This bench's options: :func:`.app_bench.add_app_arguments` and ``--chromium``."""
    add_app_arguments(parser)
    parser.add_argument("--chromium", default=CHROMIUM, help=f"chromium executable for Playwright (default {CHROMIUM})")


def browser_results(args: argparse.Namespace) -> dict:
    """:func:`run_browser` with the options :func:`add_arguments` parsed."""
    return run_browser(args.image, args.changes, args.threads, bavit=args.bavit, detector=args.detector,
                       backend=getattr(args, "backend", None), chromium=getattr(args, "chromium", CHROMIUM))


def _row(label: str, row: dict, target: float | None = None) -> str:
    line = (f"  {label:30s} median {row['median_ms']:7.1f} ms   p90 {row['p90_ms']:7.1f} ms   "
            f"min {row['min_ms']:7.1f} ms")
    if target is not None:
        line += f"   target <= {target:.0f} ms: {'met' if row['median_ms'] <= target else 'MISSED'}"
    return line


def print_browser(results: dict) -> None:
    """The browser figures with their targets, then the ``gradio_client`` line."""
    browser, client = results["browser"], results["gradio_client"]
    print(f"slider in chromium (Playwright), {results['changes']} changes in the default mode ({browser['mode']}), "
          f"torch threads={results['threads']}, image {Path(results['image']).name}")
    print(f"detector: {results['latency_note']}; load average {results['load_average'][0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print("type a value in the slider's box and press Enter, until the sparsity text shows it (performance.now in "
          "the page):")
    print(_row("grid only (detector off)", browser["grid_only"], TARGETS_MS["grid_only"])
          + f"   [{browser['grid_only_in_page']} answered in the page]")
    print(_row("with the pruned detector, ladder done", browser["with_detector"], TARGETS_MS["with_detector"])
          + f"   [{browser['with_detector_asks']} asked the server]")
    print(_row("  same, top-k (held at 30-70%)", browser["with_detector_topk"], TARGETS_MS["with_detector"]))
    print(_row("  while the ladder runs", browser["during_ladder"], TARGETS_MS["during_ladder"]))
    print(f"  detection ladder of the default mode: {browser['ladder_masks']} keep masks in "
          f"{browser['quiet_ladder_s']:.1f} s from the detector's tick (no moves; every 0.05 threshold step or 5-point "
          f"target step in {browser['coarse_ladder_s']:.1f} s, target <= 3 s), {browser['ladder_s']:.1f} s from "
          "an image's arrival with the moves above")
    others = browser["other_session"]
    if others and others["ratio"] is not None:
        print(f"another session's analyze (gradio_client): idle median {others['idle']['median_ms']:.0f} ms, while "
              f"a ladder runs {others['during_ladder']['median_ms']:.0f} ms: {others['ratio']:.2f}x "
              "(target <= 1.30x)")
    print("gradio_client round trip, same app (page_slider event, threshold mode):")
    print(_row("grid only (detector off)", client["grid_only"]))
    print(_row("with the pruned detector", client["with_detector"]))


def run(args: argparse.Namespace) -> int:
    """:func:`browser_results`, printed (and written as JSON with ``--json``)."""
    results = browser_results(args)
    print_browser(results)
    if args.json:
        write_text(args.json, json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.browser_bench``; its help is this module's docstring."""
    return run_script("benchmarks.browser_bench", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
