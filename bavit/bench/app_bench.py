"""Slider round-trip benchmark of the app; the command line is ``python -m bavit app-bench``
(:mod:`bavit.cli.app_bench`).

Starts ``python app.py`` on a free port (torch on ``--threads`` threads), loads one image through ``gradio_client``
the way the page does, then times ``--changes`` threshold changes (the ``set_threshold`` event the slider fires),
once with the pruned detector and once grid-only (detector off). A round trip is one ``Client.predict`` call:
request, queue, CCA (+ pruned YOLOS), drawing the overlays, encoding the images, response. Medians are reported,
with p90 and the per-change numbers in the JSON.

Two references separate the app's own work from the transport: the round trip of the same event before any image
is loaded (the handler returns at once: Gradio queue + SSE + gradio_client, whose result loop polls every 50 ms), and
the handler's work in-process (``Explorer.render`` on the same image and settings, same thread count).

Targets from the app issue (reported, not asserted): <= 250 ms with the pruned detector, <= 50 ms grid-only.

Live latency against the benchmark: once the app's background warm-up has its medians, the speed-up the app shows for
the loaded image (its ``analyze`` API: the latency panel's numbers, at this image's kept count, after a few pruned runs
at that count) is printed next to ``python -m bavit bench``'s speed-up at the same kept count (in-process, after the
app has stopped, same threads and backend), with their ratio and a verdict against +-10%.
"""
from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from ..deploy.runtime import DEFAULT_BACKEND
from ..errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_IMAGE = ROOT / "assets" / "examples" / "chelsea.jpg"
MODE_THRESHOLD = "FG-probability threshold"
AGREEMENT = 0.10  # the app's shown speed-up and the bench's agree when their ratio is within 1 +- this
SHOWN_KEEP_RATIO = 0.5  # the shown speed-up is read with BAViT's top half kept (top-k, CCA 3): a mid-range count


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(threads: int, bavit: str | None, detector: str | None, backend: str | None = None,
              timeout: float = 180.0) -> tuple[subprocess.Popen, str, Path]:
    """``python app.py`` on a free port (``--backend`` when given); returns (process, url, log file)."""
    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               OMP_NUM_THREADS=str(threads))
    command = [sys.executable, str(ROOT / "app.py"), "--threads", str(threads)]
    if bavit:
        command += ["--bavit", bavit]
    if detector:
        command += ["--detector", detector]
    if backend:
        command += ["--backend", backend]
    log = Path(tempfile.mkstemp(prefix="bavit-app-bench-", suffix=".log")[1])
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process, url, log
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"app did not start in {timeout:.0f} s: {log.read_text()[-2000:]}")


def time_changes(client, changes: int, detect: bool, cca_steps: int = 3) -> list[float]:
    """Round-trip ms of ``changes`` threshold changes, alternating over 0.30..0.70 so every change moves the grid."""
    thresholds = [round(0.30 + 0.40 * (i % 9) / 8, 2) for i in range(changes + 2)]
    timings = []
    for i, threshold in enumerate(thresholds):
        start = time.perf_counter()
        client.predict(MODE_THRESHOLD, threshold, 35, cca_steps, detect, False, api_name="/set_threshold")
        if i >= 2:  # the first two warm up caches and the plot for this CCA setting
            timings.append((time.perf_counter() - start) * 1000.0)
    return timings


def time_floor(client, changes: int) -> list[float]:
    """Round trips of ``set_threshold`` with no image loaded: the handler returns immediately."""
    timings = []
    for i in range(changes + 2):
        start = time.perf_counter()
        client.predict(MODE_THRESHOLD, 0.5, 35, 3, False, False, api_name="/set_threshold")
        if i >= 2:
            timings.append((time.perf_counter() - start) * 1000.0)
    return timings


def shown_speedup(client, image: Path, runs: int = 12, pause: float = 1.5, timeout: float = 240.0) -> dict:
    """The speed-up the app shows for ``image`` with :data:`SHOWN_KEEP_RATIO` of BAViT's tokens kept, CCA 3 (its
    ``analyze`` API returns the latency panel's numbers).

    Waits (polling every 2 s) until the app's background warm-up is done, then analyzes ``runs`` more times,
    ``pause`` seconds apart, as a user moving a control would: each times a pruned run at this image's kept count
    (so the pruned median comes from warm runs at this count, not the start-up curve), and meanwhile the app
    re-times dense and BAViT in the background. Returns the last result's ``speedup``, ``kept_patches``,
    ``sparsity`` and ``latency_ms``.
    """
    from gradio_client import handle_file

    def analyze() -> dict:
        return client.predict(handle_file(str(image)), 0.5, 3, SHOWN_KEEP_RATIO, api_name="/analyze")

    deadline = time.monotonic() + timeout
    result = analyze()
    while result["latency_ms"].get("warming_up") and time.monotonic() < deadline:
        time.sleep(2.0)  # the warm-up runs while no request is (each poll is one)
        result = analyze()
    for _ in range(runs):
        time.sleep(pause)
        result = analyze()
    return {"speedup": result["speedup"], "kept_patches": result["kept_patches"], "sparsity": result["sparsity"],
            "latency_ms": result["latency_ms"]}


def bench_speedup(image: str | os.PathLike, kept: int, threads: int, repeats: int, bavit: str | None = None,
                  detector: str | None = None, backend: str | None = None) -> dict:
    """``python -m bavit bench``'s batch-1 row at ``kept`` patches for ``image`` (in-process, same threads and
    backend as the app; ``repeats`` timed runs): :func:`bavit.bench.latency.run_bench` on a folder holding only
    that image."""
    from ..pruning.detector import DEFAULT_DETECTOR
    from .latency import run_bench

    with tempfile.TemporaryDirectory(prefix="bavit-app-bench-") as folder:
        shutil.copyfile(image, Path(folder) / Path(image).name)
        report = run_bench(threads=threads, sparsities=[1.0 - kept / 1024], repeats=repeats, warmup=2,
                           batch=0, bavit=bavit, detector=detector or DEFAULT_DETECTOR,
                           images=[Path(folder)], backends=(backend or DEFAULT_BACKEND,), log=lambda line: None)
    return report["results"][0]


def compare(shown: dict, bench: dict) -> dict:
    """The app's shown speed-up against the bench's: ratio (app / bench) and verdict (within +-:data:`AGREEMENT`)."""
    app, reference = shown["speedup"], bench["speedup"]
    ratio = None if app is None else app / reference
    agree = ratio is not None and abs(ratio - 1.0) <= AGREEMENT
    return {"app_speedup": app, "bench_speedup": reference, "ratio": ratio, "agree": agree,
            "app_kept": shown["kept_patches"], "bench_kept": bench["kept_patches"]}


def time_in_process(image: str | os.PathLike, changes: int, threads: int, bavit: str | None = None,
                    detector: str | None = None, backend: str | None = None) -> dict[str, list[float]]:
    """``Explorer.render`` (all the server-side work of one slider change) on ``image`` without Gradio, per mode.

    Like the app: the Predictor is built (and torch's thread count set) in the main thread, and the handler work runs
    in a worker thread, as Gradio's queue does.
    """
    import torch

    from ..app.explorer import Controls, Explorer
    from ..predictor import DEFAULT_BAVIT_CHECKPOINT, Predictor
    from ..pruning.detector import DEFAULT_DETECTOR

    torch.set_num_threads(threads)
    predictor = Predictor(bavit=bavit or DEFAULT_BAVIT_CHECKPOINT, detector=detector or DEFAULT_DETECTOR,
                          backend=backend or DEFAULT_BACKEND)
    predictor.warm_up()  # the onnxruntime export, before anything is timed
    explorer = Explorer(predictor)
    results: dict[str, list[float]] = {}

    def work() -> None:
        session = explorer.open_image({"path": str(image), "orig_name": Path(image).name})
        explorer.measure_dense(session, Controls())
        for key, detect in (("with_detector", True), ("grid_only", False)):
            timings = []
            for i in range(changes + 2):
                controls = Controls(threshold=round(0.30 + 0.40 * (i % 9) / 8, 2), detect=detect)
                start = time.perf_counter()
                explorer.render(session, controls)
                if i >= 2:
                    timings.append((time.perf_counter() - start) * 1000.0)
            results[key] = timings

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return results


def summary(timings: list[float]) -> dict:
    ordered = sorted(timings)
    return {"median_ms": statistics.median(ordered), "p90_ms": ordered[int(0.9 * (len(ordered) - 1))],
            "min_ms": ordered[0], "max_ms": ordered[-1], "changes": len(ordered), "all_ms": [round(t, 2) for t in timings]}


def client_bench(image: str | os.PathLike, changes: int, threads: int, bavit: str | None = None,
                 detector: str | None = None, backend: str | None = None, bench_repeats: int = 15) -> dict:
    """Everything measured through ``gradio_client`` against a fresh ``python app.py``: the slider round trips and,
    unless ``bench_repeats`` is 0, the app's shown speed-up (:func:`shown_speedup`); the app is stopped before this
    returns."""
    from gradio_client import Client, handle_file

    process, url, log = start_app(threads, bavit, detector, backend)
    try:
        client = Client(url, download_files=False, verbose=False)
        floor = summary(time_floor(client, changes))
        client.predict(handle_file(str(image)), MODE_THRESHOLD, 0.5, 35, 3, True, False, api_name="/load_image")
        info = client.predict(handle_file(str(image)), 0.5, 3, 0, api_name="/analyze")
        results = {
            "threads": threads,
            "image": str(image),
            "backend": backend or DEFAULT_BACKEND,
            "detector_status": info["detector_status"],
            "latency_note": info["latency_note"],
            "with_detector": summary(time_changes(client, changes, detect=True)),
            "grid_only": summary(time_changes(client, changes, detect=False)),
            "transport_floor": floor,
        }
        if bench_repeats:
            results["shown"] = shown_speedup(client, image)
    finally:
        process.terminate()
        process.wait(timeout=20)
    return results


def run_app_bench(image: str | os.PathLike = DEFAULT_IMAGE, changes: int = 20, threads: int = 2,
                  bavit: str | None = None, detector: str | None = None, backend: str | None = None,
                  bench_repeats: int = 15) -> dict:
    """The whole benchmark (see the module docstring): :func:`client_bench`, then the same work in-process
    (:func:`time_in_process`) and, when the app's speed-up was read, ``python -m bavit bench``'s at the same kept count
    (:func:`bench_speedup`, after the app has stopped, so the two never share the CPU) with their :func:`compare`.

    Returns :func:`client_bench`'s results plus ``in_process`` (summaries per mode), ``bench`` and ``agreement``
    (with a shown speed-up) and ``load_average``.

    Raises:
        ConfigError: ``bench_repeats`` below 0.
    """
    if bench_repeats < 0:
        raise ConfigError("--bench-repeats must be >= 0")
    results = client_bench(image, changes, threads, bavit, detector, backend, bench_repeats)
    in_process = time_in_process(image, changes, threads, bavit, detector, backend)
    results["in_process"] = {key: summary(value) for key, value in in_process.items()}
    shown = results.get("shown")
    if shown is not None:  # after the app has stopped, so the two never share the CPU
        results["bench"] = bench_speedup(image, int(shown["kept_patches"]), threads, bench_repeats, bavit, detector,
                                         backend)
        results["agreement"] = compare(shown, results["bench"])
    results["load_average"] = os.getloadavg()
    return results
