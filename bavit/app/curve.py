"""This image's sparsity and speed-up against the FG-probability threshold: the points, from the Predictor
(:func:`sparsity_curve`), and the plot (:class:`CurvePlot`: rendered once per image and CCA setting, its markers
drawn cheaply on every slider move).
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..predictor import PreparedImage
from ..pruning.settings import PruningSettings

CURVE_THRESHOLDS = np.round(np.linspace(0.02, 0.98, 25), 4)  # the plot's x: FG-probability thresholds
# matplotlib is not thread-safe (its docs: use it from one thread, or lock), and the app's events run in a thread
# pool: every rendering takes this lock.
_MATPLOTLIB_LOCK = threading.Lock()


def sparsity_curve(predictor, prepared: PreparedImage, cca_steps: int) -> CurvePlot:
    """The plot of this image's sparsity (%) and MAC-ratio speed-up (dense / (BAViT + pruned)) at
    :data:`CURVE_THRESHOLDS`, with the Predictor's own keep mask and token accounting (``predict(detect=False)``)."""
    sparsity, speedup = [], []
    for threshold in CURVE_THRESHOLDS:
        analysis = predictor.predict(prepared, PruningSettings(threshold=float(threshold), cca_steps=cca_steps),
                                     detect=False)
        accounting = analysis.accounting
        sparsity.append(100.0 * accounting.sparsity)
        speedup.append(accounting.flop_ratio)
    return curve_plot(CURVE_THRESHOLDS, sparsity, speedup)


@dataclass
class CurvePlot:
    """A rendered sparsity / speed-up vs threshold plot plus the maps from data to pixels, to mark points cheaply.

    Rendering with matplotlib takes ~50 ms, so it happens once per image; :meth:`with_points` only draws markers
    with PIL (< 1 ms), which keeps the slider path fast. Build with :func:`curve_plot`.
    """

    base: np.ndarray  # [H, W, 3] uint8 rendered figure
    left: np.ndarray  # [3, 3] affine: (threshold, sparsity %) -> display pixels (origin bottom-left)
    right: np.ndarray  # [3, 3] affine: (threshold, speed-up x) -> display pixels

    def _pixel(self, matrix: np.ndarray, x: float, y: float) -> tuple[float, float]:
        px, py, _ = matrix @ np.array([x, y, 1.0])
        return float(px), float(self.base.shape[0] - py)

    def with_points(
        self,
        current: tuple[float, float, float | None],
        measured: Sequence[tuple[float, float]] = (),
    ) -> Image.Image:
        """The plot with the current point and the speed-ups measured so far.

        Args:
            current: ``(threshold, sparsity %, measured speed-up x or None)``.
            measured: ``(threshold, speed-up x)`` points measured earlier for this image (small squares).
        """
        out = Image.fromarray(self.base)
        draw = ImageDraw.Draw(out)
        for threshold, speedup in measured:
            x, y = self._pixel(self.right, threshold, speedup)
            draw.rectangle((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=(44, 160, 44))
        threshold, sparsity, speedup = current
        x, y = self._pixel(self.left, threshold, sparsity)
        draw.line((x, 0, x, out.height), fill=(150, 150, 150), width=1)
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=(31, 119, 180), outline=(0, 0, 0))
        if speedup is not None:
            x, y = self._pixel(self.right, threshold, speedup)
            draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=(214, 39, 40), outline=(0, 0, 0))
        return out


def warm_up() -> None:
    """Draw one small curve, so matplotlib's first-use set-up (its font cache, text layout) happens while the app is
    built, not in the first image's event."""
    thresholds = np.linspace(0.0, 1.0, 3)
    curve_plot(thresholds, thresholds * 100.0, thresholds + 1.0)


def curve_plot(
    thresholds: Sequence[float],
    sparsity_pct: Sequence[float],
    speedup_est: Sequence[float] | None = None,
    speedup_label: str = "speed-up (MAC ratio)",
    size: tuple[float, float] = (4.6, 3.0),
    dpi: int = 100,
    speedup_max: float | None = None,
) -> CurvePlot:
    """Render sparsity (%) and an estimated speed-up (x) against the FG-probability threshold for one image.

    Args:
        thresholds: ``[K]`` thresholds in [0, 1] (x axis).
        sparsity_pct: ``[K]`` YOLOS patches pruned at each threshold, percent (left axis).
        speedup_est: optional ``[K]`` speed-up estimates (right axis, dashed).
        speedup_max: top of the speed-up axis (default: the estimate's maximum, kept within 2x..3x so measured
            speed-ups stay readable; the curve is clipped above).
    """
    with _MATPLOTLIB_LOCK:
        return _render(thresholds, sparsity_pct, speedup_est, speedup_label, size, dpi, speedup_max)


def _render(thresholds, sparsity_pct, speedup_est, speedup_label, size, dpi, speedup_max) -> CurvePlot:
    """:func:`curve_plot`'s drawing, under its lock."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(thresholds, sparsity_pct, color="tab:blue", lw=1.8, label="sparsity %")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-2.0, 102.0)
    ax.set_xlabel("FG-probability threshold")
    ax.set_ylabel("sparsity (% pruned)", color="tab:blue")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    if speedup_max is None:
        peak = float(np.nanmax(speedup_est)) * 1.1 if speedup_est is not None and len(speedup_est) else 2.0
        speedup_max = min(3.0, max(2.0, peak))
    top = speedup_max
    if speedup_est is not None:
        ax2.plot(thresholds, speedup_est, color="tab:red", lw=1.4, ls="--", label=speedup_label)
    ax2.set_ylim(0.0, top)
    ax2.set_ylabel("speed-up (x)", color="tab:red")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    handles.append(ax2.scatter([], [], s=20, marker="s", color=(44 / 255, 160 / 255, 44 / 255), label="measured"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0.0, 0.07, 1.0, 1.0))
    canvas.draw()
    base = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return CurvePlot(base=base, left=ax.transData.get_matrix().copy(), right=ax2.transData.get_matrix().copy())
