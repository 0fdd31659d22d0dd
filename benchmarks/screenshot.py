"""The README's screenshot of the settled app: ``python app.py`` on its shipped defaults (as README's first command
starts it), its background latency warm-up finished, then an example image uploaded in chromium and the page
captured once its latency panel shows a speed-up (medians of warm runs, not "warming up").

    python -m benchmarks.screenshot --out assets/screenshot.png [--image assets/examples/chelsea.jpg] [--mode topk]
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from bavit.app.session import MODE_SPARSITY, MODE_THRESHOLD, MODE_TOPK
from bavit.bench import EXAMPLES
from bavit.cli import run_script

from .app_process import running_app
from .browser_bench import CHROMIUM, app_page, wait_for_warm_up

SETTLED = re.compile(r"Speed-up: \d+\.\d\dx")
MODES = {"calibrated": MODE_SPARSITY, "topk": MODE_TOPK, "threshold": MODE_THRESHOLD}


def capture(url: str, image: Path, out: Path, mode: str = MODE_SPARSITY, chromium: str = CHROMIUM) -> str:
    """Choose the sparsity control ``mode`` on the page at ``url``, upload ``image``, wait until the latency panel
    gives a speed-up, save the whole page to ``out``; returns the latency panel's text."""
    with app_page(url, chromium) as page:
        page.locator("#mode label", has_text=mode).click()
        page.locator("#input-image input[type=file]").set_input_files(str(image))
        page.wait_for_function("() => document.querySelector('#sparsity').innerText.includes('Sparsity:')")
        page.wait_for_function("re => new RegExp(re).test(document.querySelector('#latency').innerText)",
                               arg=SETTLED.pattern)
        page.mouse.move(0, 0)
        page.screenshot(path=str(out), full_page=True)
        return page.inner_text("#latency")

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This script's options."""
    parser.add_argument("--out", default="assets/screenshot.png", help="PNG to write (default %(default)s)")
    parser.add_argument("--image", default=str(EXAMPLES / "chelsea.jpg"), help="the image to upload")
    parser.add_argument("--mode", choices=sorted(MODES), default="calibrated",
                        help="the sparsity control to show (default %(default)s, the app's own default)")
    parser.add_argument("--threads", type=int, default=2, help="the app's threads (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from gradio_client import Client

    with running_app(args.threads, None, None) as (_process, url, _log):
        wait_for_warm_up(Client(url, download_files=False, verbose=False), Path(args.image))
        latency = capture(url, Path(args.image), Path(args.out), MODES[args.mode])
    print(f"wrote {args.out}; the latency panel said:\n{latency}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.screenshot``; its help is this module's docstring."""
    return run_script("benchmarks.screenshot", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
