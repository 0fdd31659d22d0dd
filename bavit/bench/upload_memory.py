"""Peak memory of the app under the largest images it accepts: ``python -m bavit memory-bench``.

Per kind of image, starts ``python app.py`` afresh (as :mod:`bavit.bench.app_bench` does), loads one small image to
warm it up, then resets the server's peak-RSS counter (``/proc/PID/clear_refs``) and sends ``--concurrent`` uploads
of a largest-allowed image (:data:`bavit.app.uploads.MAX_IMAGE_PIXELS` pixels, under the upload limit) to the
``analyze`` API at once, from as many clients. It prints the server's resident memory before, its peak during, and
the difference. Linux only (``/proc``). Kinds: ``rgb`` (8-bit RGB PNG), ``rgba`` (8-bit RGBA PNG: the alpha
composite) and ``gray16`` (16-bit grayscale PNG), the decodes that allocate most per pixel.
"""
from __future__ import annotations

import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..app.uploads import MAX_IMAGE_PIXELS
from .app_bench import DEFAULT_IMAGE as WARM_UP_IMAGE
from .app_process import running_app

KINDS = ("rgb", "rgba", "gray16")


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


def _status(pid: int, key: str) -> float:
    """``/proc/PID/status``'s ``key`` (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def concurrent_peak(url: str, pid: int, image: Path, concurrent: int) -> dict:
    """Reset ``pid``'s peak RSS, send ``concurrent`` analyze calls of ``image`` at once; the memory figures (MiB)."""
    from gradio_client import Client, handle_file

    clients = [Client(url, download_files=False, verbose=False) for _ in range(concurrent)]
    before = _status(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
    results: list = [None] * concurrent
    start = threading.Barrier(concurrent)

    def call(index: int) -> None:
        start.wait()
        try:
            results[index] = clients[index].predict(handle_file(str(image)), 0.5, 3, 0, 0, api_name="/analyze")
        except Exception as exc:  # reported, not raised: the figure is still the server's
            results[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(concurrent)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    peak = _status(pid, "VmHWM")
    failures = [str(r) for r in results if isinstance(r, Exception)]
    return {"image": image.name, "file_mib": image.stat().st_size / 2**20, "concurrent": concurrent,
            "rss_before_mib": before, "peak_mib": peak, "peak_increase_mib": peak - before,
            "rss_after_mib": _status(pid, "VmRSS"), "seconds": time.perf_counter() - began, "failures": failures}


def fresh_app_peak(image: Path, concurrent: int, threads: int, bavit: str | None = None,
                   detector: str | None = None) -> dict:
    """:func:`concurrent_peak` on a newly started app (``threads``, ``bavit``, ``detector`` as ``app.py`` takes
    them, None for its defaults), warmed up with one small image first."""
    from gradio_client import Client, handle_file

    with running_app(threads, bavit, detector) as (process, url, _log):
        warm = Client(url, download_files=False, verbose=False)
        warm.predict(handle_file(str(WARM_UP_IMAGE)), 0.5, 3, 0, 0, api_name="/analyze")
        return concurrent_peak(url, process.pid, image, concurrent)


def memory_bench(kinds: Sequence[str] = KINDS, concurrent: int = 3, threads: int = 2, bavit: str | None = None,
                 detector: str | None = None) -> list[dict]:
    """:func:`fresh_app_peak` with a :func:`largest_image` of each of ``kinds`` (written to a new temporary folder),
    a fresh app each; one row of memory figures per kind."""
    folder = Path(tempfile.mkdtemp(prefix="bavit-memory-bench-"))
    images = {kind: largest_image(kind, folder) for kind in kinds}
    return [fresh_app_peak(images[kind], concurrent, threads, bavit, detector) for kind in kinds]
