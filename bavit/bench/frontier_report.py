"""The report of ``python -m bavit frontier`` (:func:`bavit.bench.frontier.run_frontier`) rendered: a markdown table
(:func:`format_table`) and quality against BAViT's cost as a PNG (:func:`plot`). Nothing here measures."""
from __future__ import annotations

import os
from pathlib import Path

from .figures import new_axes, save_png
from .frontier import pareto


def _cell(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
    """Markdown: one row per point, cheapest first, the Pareto points (calibrated pixel recall vs ms) starred."""
    sparsity = report["sparsity"]
    front = set(pareto(report["rows"]))
    lines = [(f"{report['data']}; onnxruntime, batch 1, {report['threads']} threads; medians of {report['repeats']} "
              f"interleaved rounds on {report['timing_images']} images; load average "
              f"{report['machine']['load_average_before'][0]:.2f} before, "
              f"{report['machine']['load_average_after'][0]:.2f} after"),
             (f"dense YOLOS-tiny {report['dense_ms']:.1f} ms; pruned YOLOS-tiny at {sparsity:.0%} "
              f"({report['kept_patches']} of {report['detector_grid'] ** 2} patches) {report['pruned_yolos_ms']:.1f} ms; "
              f"{report['detector']}"), "",
             (f"| design | graph | input | stem | width | MMACs | BAViT ms | of dense | speed-up at {sparsity:.0%} "
              f"(parts) | token acc | top-k pixel recall | calibrated pixel recall / keep rate / mean sparsity |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(report["rows"], key=lambda row: row["bavit_ms"]):
        label = f"**{row['label']}** ★" if row["label"] in front else row["label"]
        if row.get("seen"):
            label += f" (trained on {row['seen']} of these {row['images']} images)"
        calibrated = (f"{_cell(row.get('calibrated_pixel_recall'))} / {_cell(row.get('calibrated_keep_rate'))} / "
                      f"{_cell(row.get('calibrated_sparsity_mean'), '.1%')}")
        lines.append(f"| {label} | {row['graph']} | {row['img_size']} | {row['stem']} | {row['embed_dim']}x{row['depth']} "
                     f"| {row['bavit_mmacs']:.0f} | {row['bavit_ms']:.1f} | {row['share_of_dense']:.1%} "
                     f"| {row['speedup_parts']:.2f}x | {_cell(row.get('token_accuracy'), '.2%')} "
                     f"| {_cell(row.get('topk_pixel_recall'))} | {calibrated} |")
    oracle = {row.get("oracle_pixel_recall") for row in report["rows"]} - {None}
    if oracle:
        lines.append(f"\ntop-k oracle pixel recall at {sparsity:.0%}: {min(oracle):.3f}; "
                     f"★: no other point is both cheaper and higher in calibrated pixel recall; "
                     f"target: BAViT at most {report['target_share_of_dense']:.0%} of dense")
    return "\n".join(lines)


def plot(report: dict, path: str | os.PathLike) -> Path:
    """Calibrated (circles) and top-k (squares) pixel recall against BAViT ms, one colour per point (hollow for a
    float32 graph), and the line at the target share of the dense detector (matplotlib's Agg canvas, PNG)."""
    fig, ax = new_axes((6.4, 4.4))
    rows = sorted(report["rows"], key=lambda row: row["bavit_ms"])
    for index, row in enumerate(rows):
        colour = f"C{index % 10}"
        face = "none" if row["graph"] == "float32" else colour
        for key, marker in (("calibrated_pixel_recall", "o"), ("topk_pixel_recall", "s")):
            if row.get(key) is not None:
                ax.plot([row["bavit_ms"]], [row[key]], marker, markersize=6, color=colour, markerfacecolor=face,
                        label=row["label"] if key == "calibrated_pixel_recall" else None)
    ax.axvline(report["target_share_of_dense"] * report["dense_ms"], color="0.5", linestyle=":",
               label=f"{report['target_share_of_dense']:.0%} of dense YOLOS-tiny ({report['dense_ms']:.0f} ms)")
    ax.set_xlabel("BAViT ms per image (onnxruntime, batch 1; resize and normalisation included)")
    ax.set_ylabel(f"object pixel recall at {report['sparsity']:.0%} on the 32x32 detector grid")
    ax.set_title(f"{report['data']}; {report['threads']} threads\n"
                 "circles: one calibrated threshold; squares: top-k per image; hollow: float32 graph", fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="center right")
    save_png(fig, path, f"python -m bavit frontier; load average {report['machine']['load_average_before'][0]:.2f}")
    return Path(path)


__all__ = ["format_table", "plot"]
