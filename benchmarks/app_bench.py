"""Slider round-trip benchmark of the app: ``python -m benchmarks.app_bench [--changes N] [--threads N] ...``
(:func:`main`; the figures are printed, and written as JSON with ``--json``).

Starts ``python app.py`` on a free port (torch on ``--threads`` threads), loads one image through ``gradio_client``
the way the page does, then times ``--changes`` threshold changes (``page_slider``, the server event a slider move fires),
once with the pruned detector and once grid-only (detector off). A round trip is one ``Client.predict`` call:
request, queue, CCA (+ pruned YOLOS), drawing the overlays, encoding the images, response. Medians are reported,
with p90 and the per-change numbers in the JSON.

Two references separate the app's own work from the transport: the round trip of the same event before any image
is loaded (the handler returns at once: Gradio queue + SSE + gradio_client, whose result loop polls every 50 ms), and
the handler's work in-process (``Explorer.render`` on the same image and settings, same thread count).

Targets for this round trip (reported, not asserted): <= 250 ms with the pruned detector, <= 50 ms grid-only; the
page's own targets, <= 200 ms and <= 50 ms, are measured in a browser by :mod:`.browser_bench`.

The app's shown speed-up is compared with ``python -m bavit bench``'s at the same kept count by
:mod:`.app_agreement`; the app is started by :mod:`.app_process`. The slider in a real browser is
:mod:`.browser_bench`. The measured figures are in ``docs/results.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
from functools import partial
from pathlib import Path

from bavit.app.session import MODE_THRESHOLD
from bavit.bench import EXAMPLES
from bavit.bench.timing import timed_ms
from bavit.cli import run_script
from bavit.deploy.runtime import BACKENDS, DEFAULT_BACKEND
from bavit.errors import ConfigError
from bavit.files import write_text

from .app_agreement import AGREEMENT, SHOWN_KEEP_RATIO, bench_speedup, compare, shown_speedup
from .app_process import running_app

DEFAULT_IMAGE = EXAMPLES / "chelsea.jpg"
WARMUP_CHANGES = 2  # the first changes of each series warm up caches and the plot for its CCA setting: not timed


def slider_thresholds(changes: int) -> list[float]:
    """Thresholds of :data:`WARMUP_CHANGES` untimed and ``changes`` timed changes, alternating over 0.30..0.70 so
    every change moves the grid."""
    return [round(0.30 + 0.40 * (i % 9) / 8, 2) for i in range(changes + WARMUP_CHANGES)]


def time_changes(client, changes: int, detect: bool, cca_steps: int = 3) -> list[float]:
    """Round-trip ms of ``changes`` threshold changes (:func:`slider_thresholds`, after the untimed ones)."""
    return timed_ms([partial(client.predict, MODE_THRESHOLD, threshold, 35, cca_steps, detect, False,
                             api_name="/page_slider") for threshold in slider_thresholds(changes)], WARMUP_CHANGES)


def time_floor(client, changes: int) -> list[float]:
    """Round trips of ``page_slider`` with no image loaded: the handler returns immediately."""
    floor = partial(client.predict, MODE_THRESHOLD, 0.5, 35, 3, False, False, api_name="/page_slider")
    return timed_ms([floor] * (changes + WARMUP_CHANGES), WARMUP_CHANGES)


def time_in_process(image: str | os.PathLike, changes: int, threads: int, bavit: str | None = None,
                    detector: str | None = None, backend: str | None = None) -> dict[str, list[float]]:
    """``Explorer.render`` (all the server-side work of one slider change) on ``image`` without Gradio, per mode.

    Like the app: the Predictor is built (and torch's thread count set) in the main thread, and the handler work runs
    in a worker thread, as Gradio's queue does.
    """
    import torch

    from bavit.app.explorer import Controls, Explorer
    from bavit.core.registry import DEFAULT_BAVIT_CHECKPOINT
    from bavit.predictor import Predictor
    from bavit.pruning.detector import DEFAULT_DETECTOR

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
            results[key] = timed_ms([partial(explorer.render, session, Controls(threshold=threshold, detect=detect))
                                     for threshold in slider_thresholds(changes)], WARMUP_CHANGES)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return results


def summary(timings: list[float]) -> dict:
    """Median, p90, min and max of ``timings`` (ms), their count and all of them (rounded to 0.01 ms, in order)."""
    ordered = sorted(timings)
    return {"median_ms": statistics.median(ordered), "p90_ms": ordered[int(0.9 * (len(ordered) - 1))],
            "min_ms": ordered[0], "max_ms": ordered[-1], "changes": len(ordered),
            "all_ms": [round(t, 2) for t in timings]}


def client_bench(image: str | os.PathLike, changes: int, threads: int, bavit: str | None = None,
                 detector: str | None = None, backend: str | None = None, bench_repeats: int = 15) -> dict:
    """Everything measured through ``gradio_client`` against a fresh ``python app.py``: the slider round trips and,
    unless ``bench_repeats`` is 0, the app's shown speed-up (:func:`.app_agreement.shown_speedup`); the app is stopped
    before this returns."""
    from gradio_client import Client, handle_file

    with running_app(threads, bavit, detector, backend, stop_timeout=20) as (_process, url, _log):
        client = Client(url, download_files=False, verbose=False)
        floor = summary(time_floor(client, changes))
        client.predict(handle_file(str(image)), MODE_THRESHOLD, 0.5, 35, 3, True, False, api_name="/page_image")
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
    return results


def run_app_bench(image: str | os.PathLike = DEFAULT_IMAGE, changes: int = 20, threads: int = 2,
                  bavit: str | None = None, detector: str | None = None, backend: str | None = None,
                  bench_repeats: int = 15) -> dict:
    """The whole benchmark (see the module docstring): :func:`client_bench`, then the same work in-process
    (:func:`time_in_process`) and, when the app's speed-up was read, ``python -m bavit bench``'s at the same kept count
    (:func:`.app_agreement.bench_speedup`, after the app has stopped, so the two never share the CPU) with their
    :func:`.app_agreement.compare`.

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


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a bench against a fresh ``python app.py`` (this one's and :mod:`.browser_bench`'s)."""
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in the app (default 2)")
    parser.add_argument("--changes", type=int, default=20, help="threshold changes timed per mode (default 20)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image to load (default chelsea.jpg)")
    parser.add_argument("--bavit", default=None, help="BAViT checkpoint (default: the app's)")
    parser.add_argument("--detector", default=None, help="YOLOS id or dir (default: the app's; random-init latency without weights)")
    parser.add_argument("--backend", default=None, choices=BACKENDS,
                        help=f"backend of the app and the bench (default: the Predictor's, {DEFAULT_BACKEND})")
    parser.add_argument("--json", default=None, help="write the results here")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This bench's options: :func:`add_app_arguments` and ``--bench-repeats``."""
    add_app_arguments(parser)
    parser.add_argument("--bench-repeats", type=int, default=15,
                        help="bench runs for the shown-vs-bench speed-up comparison (default 15; 0 skips it)")


def run(args: argparse.Namespace) -> int:
    """:func:`run_app_bench` with the options :func:`add_arguments` parsed; its figures printed (and written)."""
    results = run_app_bench(args.image, args.changes, args.threads, bavit=args.bavit, detector=args.detector,
                            backend=args.backend, bench_repeats=args.bench_repeats)
    shown = results.get("shown")
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
    print("targets (measured in a browser by python -m benchmarks.browser_bench): <= 200 ms "
          "with the pruned detector, <= 50 ms grid only")
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


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.app_bench``; its help is this module's docstring."""
    return run_script("benchmarks.app_bench", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
