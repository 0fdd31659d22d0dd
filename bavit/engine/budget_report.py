"""The budget evaluation (:mod:`bavit.engine.budget`) as a markdown table and as a recall-vs-sparsity plot."""
from __future__ import annotations

from .budget import METHODS, SIZES


def format_budget(budget: dict[str, dict[str, dict]]) -> str:
    """Markdown: one row per level and method, the achieved mean sparsity next to the target."""

    def cell(value, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    lines = ["| target sparsity | method | mean sparsity (p10-p90) | object pixel recall | instance keep rate "
             "| keep S / M / L |", "|---|---|---|---|---|---|"]
    for level, row in budget.items():
        for method, m in row.items():
            spread = f"{cell(m['sparsity_mean'], '.1%')} ({cell(m['sparsity_p10'], '.0%')}-{cell(m['sparsity_p90'], '.0%')})"
            sizes = " / ".join(cell(m[f"keep_rate_{s}"], ".2f") for s in SIZES)
            lines.append(f"| {float(level):.0%} | {method} | {spread} | {cell(m['pixel_recall'])} "
                         f"| {cell(m['keep_rate'])} | {sizes} |")
    return "\n".join(lines)


def plot_budget(budget: dict[str, dict[str, dict]], path, title: str = "") -> None:
    """Object pixel recall against mean sparsity, one line per method (matplotlib's Agg canvas, PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..files import atomic_path

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    styles = {"oracle": ("k", "--"), "random": ("0.6", ":"), "centre": ("tab:olive", "-."),
              "bavit_topk": ("tab:blue", "-"), "bavit_calibrated": ("tab:orange", "-"),
              "bavit_calibrated_cca": ("tab:red", "-")}
    for method in METHODS:
        points = sorted((row[method]["sparsity_mean"], row[method]["pixel_recall"])
                        for row in budget.values() if method in row)
        if points:
            colour, style = styles[method]
            ax.plot([100 * s for s, _ in points], [r for _, r in points], color=colour, linestyle=style,
                    marker="o", markersize=3, label=method)
    ax.set_xlabel("mean sparsity (% of YOLOS patches pruned)")
    ax.set_ylabel("object pixel recall")
    ax.set_ylim(0.0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


__all__ = ["format_budget", "plot_budget"]
