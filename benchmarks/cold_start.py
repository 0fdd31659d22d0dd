"""The app's cold start as a first visitor meets it: ``python app.py`` started fresh on its shipped defaults, then,
as soon as the page is served, an image uploaded in chromium. Prints the seconds from the page being served to the
page loaded in chromium (started before the app), to the first grid of an image uploaded then (the sparsity panel
filled) and to the latency panel filled with a speed-up, with no user event after the upload (the page's latency
timer fills it in).

    python -m benchmarks.cold_start [--image assets/examples/chelsea.jpg] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bavit.bench import EXAMPLES
from bavit.cli import run_script

from .app_process import running_app
from .browser_bench import chromium_browser, open_app
from .screenshot import SETTLED


def cold_start(image: Path, threads: int) -> dict:
    """Seconds from the page served (chromium already started) to the page loaded, to the first grid of the upload
    made then and to the filled latency panel, and that panel's text."""
    with chromium_browser() as browser, running_app(threads, None, None) as (_process, url, _log):
        served = time.monotonic()  # start_app returns once the page answers
        page = open_app(browser, url)
        ready = time.monotonic() - served
        page.locator("#input-image input[type=file]").set_input_files(str(image))
        page.wait_for_function("() => document.querySelector('#sparsity').innerText.includes('Sparsity:')")
        grid = time.monotonic() - served
        page.wait_for_function("re => new RegExp(re).test(document.querySelector('#latency').innerText)",
                               arg=SETTLED.pattern)
        filled = time.monotonic() - served
        latency = page.inner_text("#latency")
    return {"image": str(image), "threads": threads, "page_ready_s": ready, "first_grid_s": grid,
            "latency_filled_s": filled, "latency_panel": latency, "load_average": os.getloadavg()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's options."""
    parser.add_argument("--image", default=str(EXAMPLES / "chelsea.jpg"), help="the image to upload")
    parser.add_argument("--threads", type=int, default=2, help="the app's threads (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    result = cold_start(Path(args.image), args.threads)
    print(f"page served -> page loaded: {result['page_ready_s']:.1f} s; -> first grid of the upload: "
          f"{result['first_grid_s']:.1f} s ({result['first_grid_s'] - result['page_ready_s']:.1f} s after the "
          f"upload); -> latency panel filled (no user event): "
          f"{result['latency_filled_s']:.1f} s ({args.threads} threads, load average "
          f"{result['load_average'][0]:.2f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.cold_start``; its help is this module's docstring."""
    return run_script("benchmarks.cold_start", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
