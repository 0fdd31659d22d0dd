"""``python -m bavit memory-bench``: the flags, mapped to :func:`bavit.bench.upload_memory.memory_bench`, and its
markdown table printed, one row as each case is measured. The command's help is the library module's docstring
(what each case sends, and how memory is measured)."""
from __future__ import annotations

import argparse
import json

from ..app.uploads import MAX_IMAGE_PIXELS
from ..bench import upload_memory
from ..bench.upload_memory import CASES
from ..files import write_text

COLUMNS = ("case", "calls", "RSS before", "peak", "peak increase", "held", "s", "ok", "refused", "load",
           "first refusal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """memory-bench's options."""
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="cases to run (default all)")
    parser.add_argument("--concurrent", type=int, default=3,
                        help="analyze calls at once in the rgb, rgba and gray16 cases (default 3)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after the last call before the held memory is read (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in the app (default 2)")
    parser.add_argument("--bavit", default=None, help="BAViT checkpoint (default: the app's)")
    parser.add_argument("--detector", default=None, help="YOLOS id or dir (default: the app's)")
    parser.add_argument("--json", default=None, help="write the results here")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("memory-bench", help="server memory under the largest and crafted uploads",
                                   description=upload_memory.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def table_row(row: dict) -> str:
    """One markdown row of a :func:`~bavit.bench.upload_memory.memory_bench` row."""
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
    rows = upload_memory.memory_bench(args.cases, args.concurrent, args.threads, args.bavit, args.detector,
                                      args.settle, report=lambda row: print(table_row(row), flush=True))
    if args.json:
        write_text(args.json, json.dumps({"max_image_pixels": MAX_IMAGE_PIXELS, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0 if all("error" not in row for row in rows) else 1
