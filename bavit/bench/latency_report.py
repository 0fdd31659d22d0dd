"""The report of ``python -m bavit bench`` (:func:`bavit.bench.latency.run_bench`) rendered: markdown tables per
backend and batch (:func:`format_table`), the deployable-speed targets' verdicts (:func:`verdicts`) and the speed-up
plot (:func:`plot`). Nothing here measures; the measured figures are in ``docs/results.md``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .figures import new_axes, save_png
from .latency import TARGET_FRACTION_OF_FLOP_RATIO, TARGET_SPEEDUP_AT_35


def format_table(report: dict) -> str:
    """Markdown tables of a :func:`~bavit.bench.latency.run_bench` report, one column block per backend (ms are
    medians; speed-up = dense / pipeline, each backend against its own dense run), and the targets' verdicts."""
    backends = list(report.get("backends") or {report.get("backend", "torch"): {"results": report["results"]}})
    lines = [f"threads: {report['threads']}; weights: {report['weights']}", ""]
    columns = ("| sparsity | backend | kept | dense ms | BAViT ms | CCA ms | pruned YOLOS ms | pipeline ms | speed-up "
               "| FLOP ratio | speed-up / FLOP ratio | dense img/s | pipeline img/s | peak RSS MiB |\n"
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def table(key: str, title: str) -> None:
        tables = [report["backends"][name].get(key) if "backends" in report else report.get(key) for name in backends]
        if key != "results":
            tables = [t["results"] if t else None for t in tables]
        if not any(tables):
            return
        lines.extend([title, "", columns])
        for level in range(len(tables[0])):
            for name, rows in zip(backends, tables):
                row = rows[level]
                lines.append(
                    f"| {row['sparsity'] * 100:.0f}% | {name} | {row['kept_patches']:.0f} | {row['dense_ms']:.1f} "
                    f"| {row['bavit_ms']:.1f} | {row['cca_ms']:.2f} | {row['pruned_yolos_ms']:.1f} "
                    f"| {row['pruned_total_ms']:.1f} | {row['speedup']:.2f}x | {row['flop_ratio']:.2f}x "
                    f"| {row['speedup'] / row['flop_ratio']:.2f} | {row['dense_img_per_s']:.2f} "
                    f"| {row['pruned_img_per_s']:.2f} | {row['peak_rss_mb']:.0f} |")
        lines.append("")

    table("results", "batch 1")
    for key, value in report.items():
        if key.startswith("batch") and isinstance(value, dict) and value.get("results"):
            table(key, f"batch {value['batch']} (kept counts spread up to +-10% of the grid around the level; "
                       "ms per batch; onnxruntime runs the pruned graph image by image)")
    lines.extend(verdicts(report))
    load = report["machine"]["load_average_before"][0], report["machine"]["load_average_after"][0]
    lines += ["", f"load average before/after: {load[0]:.1f}/{load[1]:.1f} on {report['machine']['cpu_count']} CPUs "
                  f"(a shared machine: expect noise); OMP_WAIT_POLICY {report['machine']['omp_wait_policy']}"]
    return "\n".join(lines)


def verdicts(report: dict) -> list[str]:
    """The deployable-speed targets against the primary backend's batch-1 rows: >= 1.50x at 35%, and at every level
    >= 29% at least 95% of the FLOP ratio."""
    target, name = report["target"], report.get("backend", "torch")
    lines = []
    if target["measured"] is not None:
        met = target["measured"] >= target["speedup"]
        lines.append(f"target: >= {target['speedup']:.2f}x at 35% sparsity, batch 1, {name}: measured "
                     f"{target['measured']:.2f}x ({'met' if met else 'NOT met'})")
    fraction = target.get("min_fraction_of_flop_ratio", TARGET_FRACTION_OF_FLOP_RATIO)
    for row in report["results"]:
        if row["sparsity"] >= 0.285:
            ratio = row["speedup"] / row["flop_ratio"]
            lines.append(f"target: speed-up >= {fraction:.0%} of the FLOP ratio at {row['sparsity'] * 100:.0f}%, "
                         f"{name}: {row['speedup']:.2f}x / {row['flop_ratio']:.2f}x = {ratio:.0%} "
                         f"({'met' if ratio >= fraction else 'NOT met'})")
    agreement = report.get("int8_agreement")
    if agreement:
        lines.append(f"int8 detector vs float32 (onnxruntime, dense, {agreement['images']} images): same most likely "
                     f"class in {agreement['same_class_share']:.1%} of the detection slots, max |logit diff| "
                     f"{agreement['max_abs_logit_diff']:.3f}, max |box diff| {agreement['max_abs_box_diff']:.4f}"
                     f"{'' if report['weights_detail']['detector_pretrained'] else ' (random weights: agreement is all that can be said)'}")
    return lines


def plot(report: dict, path: str | os.PathLike) -> Path:
    """Measured speed-up vs sparsity per backend beside the FLOP-ratio curve (matplotlib's Agg canvas; no global
    backend)."""
    fig, ax = new_axes((6.4, 4.2))
    flop = np.array(report["flop_curve"])
    ax.plot(flop[:, 0] * 100, flop[:, 1], color="0.4", linestyle="--", label="FLOP ratio (dense / BAViT + pruned)")
    backends = report.get("backends") or {report.get("backend", "torch"): {"results": report["results"]}}
    for (name, value), marker in zip(backends.items(), ("o", "^", "v", "D")):
        res = value["results"]
        ax.plot([r["sparsity"] * 100 for r in res], [r["speedup"] for r in res], f"{marker}-", label=f"{name}, batch 1")
        for key, sub in value.items():
            if key.startswith("batch") and sub and sub.get("results"):
                res = sub["results"]
                ax.plot([r["sparsity"] * 100 for r in res], [r["speedup"] for r in res], f"{marker}:",
                        label=f"{name}, batch {sub['batch']}")
    ax.axhline(1.0, color="0.7", linewidth=0.8)
    ax.plot([35], [TARGET_SPEEDUP_AT_35], "r*", markersize=10, label=f"target {TARGET_SPEEDUP_AT_35}x at 35%")
    ax.set_xlabel("sparsity (% of YOLOS patches pruned)")
    ax.set_ylabel("end-to-end speed-up vs dense YOLOS")
    ax.set_title(f"BAViT-small + CCA + pruned YOLOS-tiny, CPU {report['threads']} threads", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    save_png(fig, path, report["weights"])
    return Path(path)
