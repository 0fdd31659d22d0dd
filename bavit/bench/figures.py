"""The one figure convention of the bench plots (:mod:`.latency`, :mod:`.tradeoff`, :mod:`.frontier`):
matplotlib's Agg canvas on a figure of its own (no global backend), one set of axes, a small footnote at the bottom
left, written as a PNG atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FOOTNOTE_CHARS = 150  # a footnote longer than this is cut


def new_axes(figsize: tuple[float, float]) -> tuple["Figure", "Axes"]:
    """A ``figsize`` inch figure at 120 dpi on its own Agg canvas, and its one set of axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def save_png(fig: "Figure", path: str | os.PathLike, footnote: str) -> None:
    """Write ``fig`` to ``path`` as a PNG (atomically; the folder is created if needed), with ``footnote`` (cut to
    :data:`FOOTNOTE_CHARS`) at the bottom left."""
    fig.text(0.01, 0.01, footnote[:FOOTNOTE_CHARS], fontsize=5, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def finish(fig: "Figure", ax: "Axes", path: str | os.PathLike, xlabel: str, ylabel: str, title: str,
           title_size: float, legend_loc: str, footnote: str) -> Path:
    """The plots' common ending: axis labels, a title of ``title_size`` points, a light grid, the legend at
    ``legend_loc``, then :func:`save_png`; returns ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc=legend_loc)
    save_png(fig, path, footnote)
    return Path(path)
