"""``python -m bavit memory-bench``: the flags, mapped to :func:`bavit.bench.upload_memory.memory_bench`, and its
markdown table printed. The command's help is the library module's docstring (what is measured, and how)."""
from __future__ import annotations

import argparse
import json

from ..app.uploads import MAX_IMAGE_PIXELS
from ..bench import upload_memory
from ..bench.upload_memory import KINDS
from ..files import write_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """memory-bench's options."""
    parser.add_argument("--concurrent", type=int, default=3, help="uploads sent at once (default 3)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="images to send")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in the app (default 2)")
    parser.add_argument("--bavit", default=None, help="BAViT checkpoint (default: the app's)")
    parser.add_argument("--detector", default=None, help="YOLOS id or dir (default: the app's)")
    parser.add_argument("--json", default=None, help="write the results here")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("memory-bench", help="peak server memory under the largest accepted images",
                                   description=upload_memory.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = upload_memory.memory_bench(args.kinds, args.concurrent, args.threads, args.bavit, args.detector)
    print(f"largest allowed image: {MAX_IMAGE_PIXELS / 1e6:.0f} MP; {args.concurrent} concurrent analyze calls; "
          f"server RSS in MiB")
    print("| image | file MiB | RSS before | peak | peak increase | RSS after | s | failures |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['image']} | {row['file_mib']:.1f} | {row['rss_before_mib']:.0f} | {row['peak_mib']:.0f} | "
              f"{row['peak_increase_mib']:.0f} | {row['rss_after_mib']:.0f} | {row['seconds']:.1f} | "
              f"{len(row['failures'])} |")
        for failure in row["failures"]:
            print(f"  failure: {failure}")
    if args.json:
        write_text(args.json, json.dumps({"max_image_pixels": MAX_IMAGE_PIXELS, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0
