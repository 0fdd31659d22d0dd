"""The report of ``python -m bavit tradeoff`` (:func:`bavit.bench.tradeoff.run_tradeoff`) rendered: a markdown
table (:func:`format_table`) and recall against end-to-end latency as a PNG (:func:`plot`). Nothing here measures;
the measured figures are in ``docs/results.md``.
"""
from __future__ import annotations

import os
from pathlib import Path

from .figures import new_axes, save_png


def format_table(report: dict) -> str:
    """Markdown: the detector's ms per kept count, then one row per checkpoint, level and method."""

    def cell(value, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    latency = report["latency"]
    lines = [(f"{report['images']} images {report['dataset']}; backend {report['backend']}, {report['threads']} "
              f"threads; medians of {report['repeats']} interleaved rounds; detector: {report['weights']['detector']}"),
             "", f"dense YOLOS: {latency['dense_ms']:.1f} ms", "",
             "| kept patches | " + " | ".join(str(count) for count in latency["counts"]) + " |",
             "|---|" + "---|" * len(latency["counts"]),
             "| pruned YOLOS ms | " + " | ".join(f"{ms:.1f}" for ms in latency["pruned_ms"]) + " |", "",
             ("| checkpoint | target sparsity | method | mean sparsity | object pixel recall | instance keep rate "
              "| BAViT ms | end-to-end ms | speed-up vs dense |"), "|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['checkpoint']} | {row['level']:.0%} | {row['method']} "
                     f"| {cell(row['sparsity_mean'], '.1%')} | {cell(row['pixel_recall'])} | {cell(row['keep_rate'])} "
                     f"| {row['bavit_ms']:.1f} | {row['end_to_end_ms']:.1f} | {row['speedup']:.2f}x |")
    lines += ["", f"end-to-end: {report['end_to_end']}"]
    return "\n".join(lines)


def plot(report: dict, path: str | os.PathLike) -> Path:
    """Object pixel recall against mean end-to-end ms, one line per checkpoint and method, and dense YOLOS at
    recall 1 (matplotlib's Agg canvas, PNG; no global backend)."""
    fig, ax = new_axes((6.4, 4.4))
    styles = {"bavit_calibrated": ("-", "o"), "bavit_topk": ("--", "s"), "bavit_calibrated_cca": (":", "^")}
    for index, entry in enumerate(report["checkpoints"]):
        for method in report["methods"]:
            points = sorted((row["end_to_end_ms"], row["pixel_recall"], row["level"]) for row in report["rows"]
                            if row["checkpoint"] == entry["label"] and row["method"] == method
                            and row["pixel_recall"] is not None)
            if not points:
                continue
            style, marker = styles[method]
            ax.plot([ms for ms, _, _ in points], [recall for _, recall, _ in points], color=f"C{index}",
                    linestyle=style, marker=marker, markersize=3, label=f"{entry['label']}, {method}")
            if method == report["methods"][0]:
                for ms, recall, level in points:
                    ax.annotate(f"{level:.0%}", (ms, recall), fontsize=5, xytext=(2, 2), textcoords="offset points")
    ax.plot([report["latency"]["dense_ms"]], [1.0], "k*", markersize=9, label="dense YOLOS")
    ax.set_xlabel("mean end-to-end latency (ms): BAViT + pruned YOLOS")
    ax.set_ylabel("object pixel recall")
    ax.set_title(f"{report['images']} images {report['dataset']}; {report['backend']}, {report['threads']} threads, "
                 "batch 1 (labels: target sparsity)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    save_png(fig, path, f"detector: {report['weights']['detector']}")
    return Path(path)
