"""Server memory under the largest and the crafted uploads: ``python -m benchmarks.upload_memory [--cases ...]``
(:func:`main`: a markdown table, one row as each case is measured; ``--json`` writes them too).

Each case starts ``python app.py`` afresh (:func:`~.app_process.running_app`), warms it up (one small image through
the ``analyze`` API and one through the page's upload event), resets the server's peak-RSS counter
(``/proc/PID/clear_refs``), sends the case's calls and gives one row: the server's resident memory before, its peak
during the calls (``VmHWM``) and the increase, what it still holds ``--settle`` seconds after the last call (RSS
after - before), the seconds the calls took, how many calls succeeded or were refused (and the first refusal's
text), and the 1-minute load average when the case began. Linux only (``/proc``). Calls are made as a client or an
attacker would: ``gradio_client`` for the ``analyze`` API and the page's ``page_image`` event; raw uploads (``/gradio_api/upload``)
and queue joins (``/gradio_api/queue/join``) for the page's events; raw POSTs for the rest. The crafted files
(:mod:`.crafted_images`) are written to a new temporary folder.

Cases:

- ``rgb``, ``rgba``, ``gray16``: ``--concurrent`` (3) ``analyze`` calls at once with the largest accepted image of
  that kind (a 50 MP PNG under the upload limit; RGBA needs the alpha composite, 16-bit gray a wide decode).
- ``ico``, ``icns``: a ~650 KB ``.ico`` / ``.icns`` whose one icon is a 15000x15000 PNG of zeros (225 MP; its
  header says 256x256 / 1024x1024, and Pillow decodes the PNG to learn more); 6 at once, 2 each through
  ``analyze``, ``page_image`` through a client and the page's upload event (the ``change`` of ``#input-image``).
- ``paint``: the "Compare with painted GT" event (the ``click`` of ``#gt-apply``) once, in a session with a small
  image loaded; its ``gr.ImageEditor`` value is an uploaded 15000x15000 zero PNG as background, as each of 4
  layers and as composite, as a 15000x15000 canvas would send it (Gradio decodes each into an RGBA array before
  the app runs).
- ``corrupt``: 3 ``analyze`` calls at once, each with a ~50 MP PNG whose pixel stream stops after 90% of its rows,
  so Pillow decodes most of the image before it fails: what the refusal keeps.
- ``run-predict``: 16 ``analyze`` calls at once, each uploading a 12 MP (4000x3000) JPEG, posted straight to
  ``/gradio_api/run/predict`` (outside the queue and its concurrency limit); then, on another fresh app, the same
  16 through the queue (``gradio_client``) for comparison: two rows.
- ``sessions``: 300 sessions (distinct ``session_hash``), each uploading the 12 MP JPEG and setting it through the
  page's upload event, 8 at a time; held is what the sessions keep.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bavit.app.uploads import MAX_IMAGE_PIXELS
from bavit.cli import run_script
from bavit.files import write_text

from . import crafted_images as crafted
from .app_bench import DEFAULT_IMAGE as WARM_UP_IMAGE
from .app_process import running_app
from .app_requests import ANALYZE, CONTROLS, Server, new_session, queue_call, run_predict, upload

KINDS = ("rgb", "rgba", "gray16")
CASES = (*KINDS, "ico", "icns", "paint", "corrupt", "run-predict", "sessions")
ICON_CALLS, PAINT_LAYERS, CORRUPT_CALLS, BURST, SESSIONS, SESSIONS_AT_ONCE = 6, 4, 3, 16, 300, 8
COLUMNS = ("case", "calls", "RSS before", "peak", "peak increase", "held", "s", "ok", "refused", "load",
           "first refusal")


def largest_image(kind: str, folder: Path, pixels: int = MAX_IMAGE_PIXELS) -> Path:
    """A PNG of at most ``pixels`` pixels (4:3) of ``kind``: bands of colour, so it compresses under the upload
    limit while decoding to full size."""
    height = int(math.sqrt(pixels * 3 / 4))
    width = pixels // height
    rows = (np.arange(height) // 64 % 8 * 32).astype(np.uint8)
    if kind == "gray16":
        band = (rows.astype(np.uint16) * 257)[:, None]
        image = Image.fromarray(np.ascontiguousarray(np.broadcast_to(band, (height, width))))  # uint16: I;16
    else:
        channels = 4 if kind == "rgba" else 3
        band = np.repeat(rows[:, None, None], channels, axis=2)
        if kind == "rgba":
            band[..., 3] = 200
        image = Image.fromarray(np.ascontiguousarray(np.broadcast_to(band, (height, width, channels))))
    path = folder / f"largest-{kind}.png"
    image.save(path, compress_level=6)
    return path


class Files:
    """The cases' files, each written to ``folder`` when first asked for."""

    def __init__(self, folder: Path):
        self.folder = folder

    def largest(self, kind: str) -> Path:
        path = self.folder / f"largest-{kind}.png"
        return path if path.exists() else largest_image(kind, self.folder)

    @cached_property
    def bomb(self) -> Path:  # 15000x15000 zero PNG
        return crafted.zero_png(self.folder / "zeros-15000.png")

    @cached_property
    def ico(self) -> Path:
        return crafted.ico_holding(self.folder / "bomb.ico", self.bomb.read_bytes())

    @cached_property
    def icns(self) -> Path:
        return crafted.icns_holding(self.folder / "bomb.icns", self.bomb.read_bytes())

    @cached_property
    def corrupt(self) -> Path:
        return crafted.truncated_png(self.folder / "corrupt-50mp.png", MAX_IMAGE_PIXELS)

    @cached_property
    def photo(self) -> Path:  # 12 MP JPEG
        return crafted.photo_jpeg(self.folder / "photo-12mp.jpg")


def _status(pid: int, key: str) -> float:
    """``/proc/PID/status``'s ``key`` (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


# Each case makes its calls (functions of no argument), given the warmed-up server and the files; setting up (a
# session, an upload) is done here, before the measurement starts.
def kind_calls(kind: str, server: Server, files: Files, concurrent: int) -> list:
    return [server.api("/analyze", files.largest(kind)) for _ in range(concurrent)]


def icon_calls(kind: str, server: Server, files: Files, _concurrent: int) -> list:
    path = getattr(files, kind)
    payload = upload(server.url, path)  # the page's calls send it as uploaded; the clients upload it themselves
    calls = []
    for _ in range(ICON_CALLS // 3):
        calls += [server.api("/analyze", path), server.api("/page_image", path, CONTROLS),
                  partial(server.page_image, payload)]
    return calls


def paint_calls(server: Server, files: Files, _concurrent: int) -> list:
    session = new_session()
    server.page_image(upload(server.url, WARM_UP_IMAGE), session)  # the session has an image to compare with
    layer = upload(server.url, files.bomb)
    editor = {"background": layer, "layers": [layer] * PAINT_LAYERS, "composite": layer}
    fn_index = server.fn(elem_id="gt-apply", trigger="click")
    return [partial(queue_call, server.url, fn_index, [None, editor, *CONTROLS], session)]


def corrupt_calls(server: Server, files: Files, _concurrent: int) -> list:
    return [server.api("/analyze", files.corrupt) for _ in range(CORRUPT_CALLS)]


def direct_calls(server: Server, files: Files, _concurrent: int) -> list:
    fn_index = server.fn(api_name="analyze")
    return [lambda: run_predict(server.url, fn_index, [upload(server.url, files.photo), *ANALYZE])] * BURST


def queued_calls(server: Server, files: Files, _concurrent: int) -> list:
    return [server.api("/analyze", files.photo) for _ in range(BURST)]


def session_calls(server: Server, files: Files, _concurrent: int) -> list:
    return [lambda: server.page_image(upload(server.url, files.photo))] * SESSIONS


RUNS: dict[str, list[tuple[str, Callable, int | None]]] = {  # case: its rows (label, calls, at once)
    **{kind: [(kind, partial(kind_calls, kind), None)] for kind in KINDS},
    **{kind: [(kind, partial(icon_calls, kind), None)] for kind in ("ico", "icns")},
    "paint": [("paint", paint_calls, None)],
    "corrupt": [("corrupt", corrupt_calls, None)],
    "run-predict": [("run-predict", direct_calls, None), ("run-predict via queue", queued_calls, None)],
    "sessions": [("sessions", session_calls, SESSIONS_AT_ONCE)],
}


def _outcome(call: Callable[[], Any]) -> str | None:
    """None when ``call`` succeeds, else its error's text."""
    try:
        call()
        return None
    except Exception as exc:  # reported, not raised: the figures are still the server's
        return " ".join(str(exc).split()) or type(exc).__name__


def _children(pid: int) -> list[str]:
    """The pids of ``pid``'s child processes (Linux: each thread's ``children`` file)."""
    tasks = Path(f"/proc/{pid}/task")
    return [child for task in tasks.iterdir() for child in (task / "children").read_text().split()]


def wait_until_quiet(pid: int, still_mib: float = 2.0, interval: float = 2.0, limit: float = 180.0) -> None:
    """Wait (at most ``limit`` s in all) until ``pid`` has no child process (the warm-up's export child has exited:
    the runners are built and loaded) and its RSS then moves less than ``still_mib`` in ``interval`` s: the app's
    background latency warm-up has finished, so what it allocates is not counted as held by the calls."""
    deadline = time.monotonic() + limit
    while _children(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    last = _status(pid, "VmRSS")
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = _status(pid, "VmRSS")
        if abs(now - last) < still_mib:
            return
        last = now


def measure(pid: int, calls: list, at_once: int | None = None, settle: float = 3.0) -> dict:
    """Reset ``pid``'s peak RSS, run ``calls`` (``at_once`` at a time, all by default) and wait ``settle`` s: the
    memory figures (MiB), seconds and outcomes."""
    before = _status(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
    began = time.perf_counter()
    with ThreadPoolExecutor(at_once or len(calls)) as pool:
        outcomes = list(pool.map(_outcome, calls))
    seconds = time.perf_counter() - began
    peak = _status(pid, "VmHWM")
    time.sleep(settle)
    refusals = [o for o in outcomes if o is not None]
    return {"calls": len(calls), "rss_before_mib": before, "peak_mib": peak, "peak_increase_mib": peak - before,
            "held_mib": _status(pid, "VmRSS") - before, "seconds": seconds, "ok": len(calls) - len(refusals),
            "refused": len(refusals), "first_refusal": refusals[0] if refusals else ""}


def fresh_app_row(label: str, build: Callable, at_once: int | None, files: Files, concurrent: int = 3,
                  threads: int = 2, bavit: str | None = None, detector: str | None = None,
                  settle: float = 3.0) -> dict:
    """One row: a newly started app (``threads``, ``bavit``, ``detector`` as ``app.py`` takes them, None for its
    defaults), warmed up, then :func:`measure` of the calls ``build`` makes."""
    load = os.getloadavg()[0]
    with running_app(threads, bavit, detector) as (process, url, _log):
        server = Server.connect(url, process.pid)
        server.api("/analyze", WARM_UP_IMAGE)()
        server.page_image(upload(url, WARM_UP_IMAGE))
        wait_until_quiet(process.pid)
        row = measure(process.pid, build(server, files, concurrent), at_once, settle)
    return {"case": label, "load": load, **row}


def memory_bench(cases: Sequence[str] = CASES, concurrent: int = 3, threads: int = 2, bavit: str | None = None,
                 detector: str | None = None, settle: float = 3.0,
                 report: Callable[[dict], None] | None = None) -> list[dict]:
    """The rows of ``cases`` (:data:`RUNS`), a fresh app each, their files in a temporary folder (removed at the
    end); ``report`` is called with each row as it is measured. A case that fails gives a row with its error."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bavit-memory-bench-") as folder:
        files = Files(Path(folder))
        for case in cases:
            for label, build, at_once in RUNS[case]:
                try:
                    row = fresh_app_row(label, build, at_once, files, concurrent, threads, bavit, detector, settle)
                except Exception as exc:  # the other cases still run
                    row = {"case": label, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
                rows.append(row)
                if report:
                    report(row)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This bench's options."""
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="cases to run (default all)")
    parser.add_argument("--concurrent", type=int, default=3,
                        help="analyze calls at once in the rgb, rgba and gray16 cases (default 3)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after the last call before the held memory is read (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in the app (default 2)")
    parser.add_argument("--bavit", default=None, help="BAViT checkpoint (default: the app's)")
    parser.add_argument("--detector", default=None, help="YOLOS id or dir (default: the app's)")
    parser.add_argument("--json", default=None, help="write the results here")


def table_row(row: dict) -> str:
    """One markdown row of a :func:`memory_bench` row."""
    if "error" in row:
        return f"| {row['case']} | bench error: {row['error']} |"
    refusal = row["first_refusal"].replace("|", "\\|")
    refusal = refusal if len(refusal) <= 160 else refusal[:157] + "..."
    return (f"| {row['case']} | {row['calls']} | {row['rss_before_mib']:.0f} | {row['peak_mib']:.0f} | "
            f"{row['peak_increase_mib']:+.0f} | {row['held_mib']:+.0f} | {row['seconds']:.1f} | {row['ok']} | "
            f"{row['refused']} | {row['load']:.2f} | {refusal} |")


def run(args: argparse.Namespace) -> int:
    print(f"server RSS in MiB, a freshly started app per row ({args.threads} torch threads); peak: VmHWM during the "
          f"calls; held: RSS {args.settle:g} s after the last call - RSS before; load: 1-min load average at the "
          f"start; largest accepted image {MAX_IMAGE_PIXELS / 1e6:.0f} MP")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS), flush=True)
    rows = memory_bench(args.cases, args.concurrent, args.threads, args.bavit, args.detector, args.settle,
                        report=lambda row: print(table_row(row), flush=True))
    if args.json:
        write_text(args.json, json.dumps({"max_image_pixels": MAX_IMAGE_PIXELS, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0 if all("error" not in row for row in rows) else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.upload_memory``; its help is this module's docstring (what each case sends, and how
    memory is measured)."""
    return run_script("benchmarks.upload_memory", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
