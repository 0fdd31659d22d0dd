"""Slider round-trip benchmark of the app: ``python -m bavit app-bench`` (or ``python -m bavit.bench.app_bench``).

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

import argparse
import json
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

from ..deploy.runtime import BACKENDS, DEFAULT_BACKEND
from ..errors import ConfigError
from ..files import write_text

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


def bench_speedup(args: argparse.Namespace, kept: int) -> dict:
    """``python -m bavit bench``'s batch-1 row at ``kept`` patches for ``args.image`` (in-process, same threads and
    backend as the app): :func:`bavit.bench.latency.run_bench` on a folder holding only that image."""
    from ..pruning.detector import DEFAULT_DETECTOR
    from .latency import run_bench

    with tempfile.TemporaryDirectory(prefix="bavit-app-bench-") as folder:
        shutil.copyfile(args.image, Path(folder) / Path(args.image).name)
        report = run_bench(threads=args.threads, sparsities=[1.0 - kept / 1024], repeats=args.bench_repeats, warmup=2,
                           batch=0, bavit=args.bavit, detector=args.detector or DEFAULT_DETECTOR,
                           images=[Path(folder)], backends=(args.backend or DEFAULT_BACKEND,), log=lambda line: None)
    return report["results"][0]


def compare(shown: dict, bench: dict) -> dict:
    """The app's shown speed-up against the bench's: ratio (app / bench) and verdict (within +-:data:`AGREEMENT`)."""
    app, reference = shown["speedup"], bench["speedup"]
    ratio = None if app is None else app / reference
    agree = ratio is not None and abs(ratio - 1.0) <= AGREEMENT
    return {"app_speedup": app, "bench_speedup": reference, "ratio": ratio, "agree": agree,
            "app_kept": shown["kept_patches"], "bench_kept": bench["kept_patches"]}


def time_in_process(args: argparse.Namespace, changes: int) -> dict[str, list[float]]:
    """``Explorer.render`` (all the server-side work of one slider change) without Gradio, per mode.

    Like the app: the Predictor is built (and torch's thread count set) in the main thread, and the handler work runs
    in a worker thread, as Gradio's queue does.
    """
    import torch

    from ..app.explorer import Controls, Explorer
    from ..predictor import DEFAULT_BAVIT_CHECKPOINT, Predictor
    from ..pruning.detector import DEFAULT_DETECTOR

    torch.set_num_threads(args.threads)
    predictor = Predictor(bavit=args.bavit or DEFAULT_BAVIT_CHECKPOINT, detector=args.detector or DEFAULT_DETECTOR,
                          backend=args.backend or DEFAULT_BACKEND)
    predictor.warm_up()  # the onnxruntime export, before anything is timed
    explorer = Explorer(predictor)
    results: dict[str, list[float]] = {}

    def work() -> None:
        session = explorer.open_image({"path": str(args.image), "orig_name": Path(args.image).name})
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


def client_bench(args: argparse.Namespace) -> dict:
    """Everything measured through ``gradio_client`` against a fresh ``python app.py``: the slider round trips and
    the app's shown speed-up (:func:`shown_speedup`); the app is stopped before this returns."""
    from gradio_client import Client, handle_file

    process, url, log = start_app(args.threads, args.bavit, args.detector, args.backend)
    try:
        client = Client(url, download_files=False, verbose=False)
        floor = summary(time_floor(client, args.changes))
        client.predict(handle_file(str(args.image)), MODE_THRESHOLD, 0.5, 35, 3, True, False, api_name="/load_image")
        info = client.predict(handle_file(str(args.image)), 0.5, 3, 0, api_name="/analyze")
        results = {
            "threads": args.threads,
            "image": str(args.image),
            "backend": args.backend or DEFAULT_BACKEND,
            "detector_status": info["detector_status"],
            "latency_note": info["latency_note"],
            "with_detector": summary(time_changes(client, args.changes, detect=True)),
            "grid_only": summary(time_changes(client, args.changes, detect=False)),
            "transport_floor": floor,
        }
        if args.bench_repeats:
            results["shown"] = shown_speedup(client, args.image)
    finally:
        process.terminate()
        process.wait(timeout=20)
    return results


def run(args: argparse.Namespace) -> int:
    if getattr(args, "browser", False):
        from .browser_bench import print_browser, run_browser

        results = run_browser(args)
        print_browser(results)
        if args.json:
            write_text(args.json, json.dumps(results, indent=2))
            print(f"wrote {args.json}")
        return 0
    if args.bench_repeats < 0:
        raise ConfigError("--bench-repeats must be >= 0")
    results = client_bench(args)
    in_process = time_in_process(args, args.changes)
    results["in_process"] = {key: summary(value) for key, value in in_process.items()}
    shown = results.get("shown")
    if shown is not None:  # after the app has stopped, so the two never share the CPU
        results["bench"] = bench_speedup(args, int(shown["kept_patches"]))
        results["agreement"] = compare(shown, results["bench"])
    results["load_average"] = os.getloadavg()
    print(f"slider round trip through gradio_client, {args.changes} changes, torch threads={args.threads}, image {Path(args.image).name}")
    print(f"detector: {results['latency_note']}; load average {results['load_average'][0]:.1f} on {os.cpu_count()} CPUs")
    rows = (("with_detector", "CCA + pruned YOLOS + drawing"), ("grid_only", "grid only (detector off)"),
            ("transport_floor", "no image loaded (transport floor)"))
    for key, label in rows:
        row = results[key]
        print(f"  {label:34s} median {row['median_ms']:7.1f} ms   p90 {row['p90_ms']:7.1f} ms   min {row['min_ms']:7.1f} ms")
    print("same work in-process (Explorer.render in a worker thread, no Gradio):")
    for key, label in rows[:2]:
        row = results["in_process"][key]
        print(f"  {label:34s} median {row['median_ms']:7.1f} ms   p90 {row['p90_ms']:7.1f} ms   min {row['min_ms']:7.1f} ms")
    print("targets (deployable-speed issue, measured in a browser with --browser): <= 200 ms with the pruned "
          "detector, <= 50 ms grid only")
    if shown is not None:
        print_agreement(results)
    if args.json:
        write_text(args.json, json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


def print_agreement(results: dict) -> None:
    """The app's shown speed-up next to the bench's at the same kept count, their ratio and the verdict."""
    shown, bench, agreement = results["shown"], results["bench"], results["agreement"]
    medians = shown["latency_ms"]

    def ms(key: str) -> str:
        return "n/a" if medians.get(key) is None else f"{medians[key]:.1f}"

    print(f"speed-up at {agreement['app_kept']} kept patches ({shown['sparsity']:.0%} sparsity; top "
          f"{SHOWN_KEEP_RATIO:.0%} of BAViT's tokens, CCA 3), backend {bench['backend']}:")
    app = "warming up (no number)" if agreement["app_speedup"] is None else f"{agreement['app_speedup']:.2f}x"
    print(f"  app shows  {app:>8s}   dense {ms('dense')} ms ({medians.get('dense_runs')} warm runs), BAViT "
          f"{ms('bavit')} ms ({medians.get('bavit_runs')}), CCA {ms('cca')} ms, pruned {ms('pruned')} ms "
          f"({medians.get('pruned_runs')} warm runs; {medians.get('pruned_source') or 'none'})")
    print(f"  bench      {agreement['bench_speedup']:7.2f}x   dense {bench['dense_ms']:.1f} ms, BAViT "
          f"{bench['bavit_ms']:.1f} ms, CCA {bench['cca_ms']:.2f} ms, pruned {bench['pruned_yolos_ms']:.1f} ms ({bench['kept_patches']:.0f} kept, "
          f"medians of {bench['repeats']} interleaved runs)")
    if agreement["ratio"] is None:
        print("  verdict: NO NUMBER (the app was still warming up)")
    else:
        verdict = "agree" if agreement["agree"] else "DISAGREE"
        print(f"  ratio app / bench {agreement['ratio']:.3f}: {verdict} (within +-{AGREEMENT:.0%})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in the app (default 2)")
    parser.add_argument("--changes", type=int, default=20, help="threshold changes timed per mode (default 20)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image to load (default chelsea.jpg)")
    parser.add_argument("--bavit", default=None, help="BAViT checkpoint (default: the app's)")
    parser.add_argument("--detector", default=None, help="YOLOS id or dir (default: the app's; random-init latency without weights)")
    parser.add_argument("--backend", default=None, choices=BACKENDS,
                        help=f"backend of the app and the bench (default: the Predictor's, {DEFAULT_BACKEND})")
    parser.add_argument("--bench-repeats", type=int, default=15,
                        help="bench runs for the shown-vs-bench speed-up comparison (default 15; 0 skips it)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--browser", action="store_true",
                        help="time the slider in a real browser instead (Playwright + Debian's chromium; "
                             "bavit.bench.browser_bench), with the gradio_client figures as a second line")
    from .browser_bench import add_browser_arguments  # here, not at the top: browser_bench imports this module

    add_browser_arguments(parser)


def register(subparsers) -> None:
    """``python -m bavit app-bench``."""
    parser = subparsers.add_parser("app-bench", help="slider round-trip latency of the Gradio app")
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bavit.bench.app_bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
