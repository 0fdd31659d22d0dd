"""``python -m bavit app-bench`` (and ``--browser``): the flags, mapped to
:func:`bavit.bench.app_bench.run_app_bench` or :func:`bavit.bench.browser_bench.run_browser`, and their figures
printed."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..bench import app_bench
from ..bench.app_agreement import AGREEMENT, SHOWN_KEEP_RATIO
from ..bench.app_bench import DEFAULT_IMAGE
from ..bench.browser_bench import CHROMIUM, TARGETS_MS, run_browser
from ..deploy.runtime import BACKENDS, DEFAULT_BACKEND
from ..files import write_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """app-bench's options, the browser bench's (``--browser``, ``--chromium``) included."""
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
    parser.add_argument("--chromium", default=CHROMIUM, help=f"chromium executable for Playwright (default {CHROMIUM})")


def register(subparsers: argparse._SubParsersAction) -> None:
    """``python -m bavit app-bench``."""
    parser = subparsers.add_parser("app-bench", help="slider round-trip latency of the Gradio app")
    add_arguments(parser)
    parser.set_defaults(func=run)


def browser_results(args: argparse.Namespace) -> dict:
    """:func:`~bavit.bench.browser_bench.run_browser` with the options :func:`add_arguments` parsed."""
    return run_browser(args.image, args.changes, args.threads, bavit=args.bavit, detector=args.detector,
                       backend=getattr(args, "backend", None), chromium=getattr(args, "chromium", CHROMIUM))


def run(args: argparse.Namespace) -> int:
    if getattr(args, "browser", False):
        results = browser_results(args)
        print_browser(results)
        if args.json:
            write_text(args.json, json.dumps(results, indent=2))
            print(f"wrote {args.json}")
        return 0
    results = app_bench.run_app_bench(args.image, args.changes, args.threads, bavit=args.bavit,
                                      detector=args.detector, backend=args.backend,
                                      bench_repeats=args.bench_repeats)
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
    print(_row("with the pruned detector", browser["with_detector"], TARGETS_MS["with_detector"]))
    if "with_detector_topk" in browser:
        print(_row("  same, top-k (held at 30-70%)", browser["with_detector_topk"], TARGETS_MS["with_detector"]))
    print("gradio_client round trip, same app (set_threshold API, threshold mode, grid and curve images):")
    print(_row("grid only (detector off)", client["grid_only"]))
    print(_row("with the pruned detector", client["with_detector"]))


