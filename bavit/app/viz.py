"""Drawing for the app: patch-grid overlays, GT-vs-prediction confusion, the detection boxes the page draws (as data), the legends, and this
image's sparsity and speed-up against the FG-probability threshold (:func:`sparsity_curve`: the points, from the
Predictor; :class:`CurvePlot`: the plot, rendered once per image and CCA setting, its markers drawn cheaply on every
slider move).

Every overlay helper takes and returns 8-bit RGB PIL images and is cheap enough to run on each slider move (a few ms
at 512 px). A ``[gh, gw]`` grid is laid over the whole image the way the models see it after their square resize:
cell ``(r, c)`` covers rows ``r*H/gh .. (r+1)*H/gh`` and columns ``c*W/gw .. (c+1)*W/gw`` (the layout of
:mod:`bavit.core.labels`).
"""
from __future__ import annotations

import colorsys
import threading
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..engine.metrics import FN, FP, IGNORED, TN, TP, confusion_cells
from ..predictor import PreparedImage
from ..pruning.settings import PruningSettings

RGB = tuple[int, int, int]

# Cell classes of the overlays, with their colour and blend weight (alpha 0 leaves the pixel untouched); the
# confusion classes TN / TP / FP / FN / IGNORED are bavit.engine.metrics'.
BG, FG, FLIPPED = 0, 1, 2

GRID_PALETTE: dict[int, tuple[RGB, float]] = {
    BG: ((25, 35, 90), 0.55),  # background: darkened, bluish
    FG: ((255, 140, 0), 0.40),  # foreground kept by BAViT: orange
    FLIPPED: ((230, 0, 230), 0.60),  # BG -> FG by CCA: magenta
}
CONFUSION_PALETTE: dict[int, tuple[RGB, float]] = {
    TN: ((25, 35, 90), 0.55),  # both BG
    TP: ((0, 200, 80), 0.45),  # both FG: green
    FP: ((230, 40, 40), 0.55),  # predicted FG, GT BG: red
    FN: ((255, 220, 0), 0.60),  # GT FG, predicted BG (an object token pruned): yellow
    IGNORED: ((128, 128, 128), 0.70),  # GT says ignore (VOC void)
}
GRID_LEGEND = {"background (pruned)": GRID_PALETTE[BG][0], "foreground (kept)": GRID_PALETTE[FG][0],
               "flipped to FG by CCA": GRID_PALETTE[FLIPPED][0]}
CONFUSION_LEGEND = {"TP (object, kept)": CONFUSION_PALETTE[TP][0], "FP (background, kept)": CONFUSION_PALETTE[FP][0],
                    "FN (object, pruned)": CONFUSION_PALETTE[FN][0], "TN (background, pruned)": CONFUSION_PALETTE[TN][0]}
# What pruning cost (dense detections matched to pruned ones, bavit.engine.pruning_cost): a colour per outcome.
COST_COLOURS: dict[str, RGB] = {"kept": (40, 200, 60), "moved": (255, 160, 0), "lost": (230, 40, 40),
                                "new": (40, 120, 255)}
COST_LEGEND = {"kept (same label, IoU >= 0.9)": COST_COLOURS["kept"], "moved (IoU 0.5-0.9)": COST_COLOURS["moved"],
               "lost (dense only)": COST_COLOURS["lost"], "new (pruned only)": COST_COLOURS["new"]}
LINE_COLOR: RGB = (255, 255, 255)
LINE_ALPHA = 0.25


def fit_image(image: Image.Image, max_side: int = 512) -> Image.Image:
    """RGB copy whose longer side is at most ``max_side`` px (aspect kept): the size every overlay is drawn at."""
    image = image.convert("RGB")
    if max(image.size) <= max_side:
        return image.copy()
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BILINEAR)


def cell_index(length: int, cells: int) -> np.ndarray:
    """``[length]`` int: the grid cell each pixel row (or column) of an image lies in, ``(i * cells) // length``."""
    return (np.arange(length) * cells) // length


def overlay_cells(
    image: Image.Image,
    classes: np.ndarray,
    palette: Mapping[int, tuple[RGB, float]],
    lines: bool = True,
) -> Image.Image:
    """Tint each grid cell of ``image`` with its class colour.

    Args:
        image: RGB image (any size; draw at display size, see :func:`fit_image`).
        classes: ``[gh, gw]`` int class per cell (keys of ``palette``).
        palette: class -> (RGB colour, alpha); pixel = ``round((1 - alpha) * pixel + alpha * colour)``; classes
            missing from the palette are left untouched.
        lines: draw the cell borders (the first pixel row/column of each cell) as faint white lines, blended the
            same way onto the tinted pixel.
    Returns:
        RGB image of the same size.
    """
    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise ValueError(f"classes must be a [gh, gw] grid, got shape {classes.shape}")
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    gh, gw = classes.shape
    # Per-pixel class map by repeating each cell over its pixel rows / columns (the cell_index layout).
    rows, cols = cell_index(height, gh), cell_index(width, gw)
    class_px = np.repeat(np.repeat(classes.astype(np.intp), np.bincount(rows, minlength=gh), axis=0),
                         np.bincount(cols, minlength=gw), axis=1)
    # The blend as a lookup table: lut[class, channel, value] = round((1 - alpha) * value + alpha * colour).
    levels = np.arange(256, dtype=np.float64)
    lut = np.repeat(levels.astype(np.uint8)[None, None], max(int(classes.max(initial=0)), max(palette)) + 1, axis=0)
    lut = np.repeat(lut, 3, axis=1)
    for value, (rgb, weight) in palette.items():
        for channel in range(3):
            lut[value, channel] = np.clip(np.rint((1.0 - weight) * levels + weight * rgb[channel]), 0, 255)
    out = np.empty_like(pixels)
    for channel in range(3):
        out[..., channel] = lut[class_px, channel, pixels[..., channel]]
    if lines:
        line_lut = np.stack([np.clip(np.rint((1.0 - LINE_ALPHA) * levels + LINE_ALPHA * c), 0, 255) for c in LINE_COLOR])
        line_lut = line_lut.astype(np.uint8)
        row_edges = np.flatnonzero(np.diff(rows)) + 1
        col_edges = np.flatnonzero(np.diff(cols)) + 1
        for channel in range(3):
            out[row_edges, :, channel] = line_lut[channel, out[row_edges, :, channel]]
            out[:, col_edges, channel] = line_lut[channel, out[:, col_edges, channel]]
    return Image.fromarray(out)


def grid_classes(grid: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
    """``[gh, gw]`` classes BG/FG, and FLIPPED where ``grid`` is FG but ``before`` (the grid before CCA) is BG."""
    grid = np.asarray(grid, dtype=bool)
    classes = grid.astype(np.int64)  # BG = 0, FG = 1
    if before is not None:
        before = np.asarray(before, dtype=bool)
        if before.shape != grid.shape:
            raise ValueError(f"grid {grid.shape} and grid before CCA {before.shape} differ in shape")
        classes[grid & ~before] = FLIPPED
    return classes


def grid_overlay(image: Image.Image, grid: np.ndarray, before: np.ndarray | None = None, lines: bool = True) -> Image.Image:
    """FG/BG patch grid over the image; with ``before`` (the raw grid), the cells CCA flipped get their own colour.

    Args:
        image: RGB display image.
        grid: ``[gh, gw]`` bool, True = FG (kept token).
        before: optional ``[gh, gw]`` bool grid before CCA.
    """
    return overlay_cells(image, grid_classes(grid, before), GRID_PALETTE, lines=lines)


def confusion_overlay(image: Image.Image, gt: np.ndarray, pred: np.ndarray, lines: bool = True) -> Image.Image:
    """GT-vs-prediction overlay: TP green, FP red, FN yellow, TN darkened, ignored grey."""
    return overlay_cells(image, confusion_cells(pred, gt), CONFUSION_PALETTE, lines=lines)


def label_color(label: str) -> RGB:
    """A stable, saturated colour per class name (same label, same colour, across runs)."""
    hue = (zlib.crc32(label.encode()) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def detection_marks(detections: Sequence[Mapping], image_size: tuple[int, int], display_size: tuple[int, int],
                    colours: Sequence[RGB] | None = None) -> list[dict]:
    """What the page draws for ``detections`` over the display image (static/draw.js ``drawDetections``): per
    detection ``box`` ``[x0, y0, x1, y1]`` in display pixels, ``colour`` ``[r, g, b]`` and ``caption`` ``"label score"``.

    Args:
        detections: dicts with ``box=(x0, y0, x1, y1)`` in pixels of ``image_size``, ``label`` str, ``score`` float.
        image_size: ``(width, height)`` the boxes refer to (the analysed image).
        display_size: ``(width, height)`` of the display image they are drawn on.
        colours: one per detection (default: the label's colour, :func:`label_color`).
    """
    sx, sy = display_size[0] / image_size[0], display_size[1] / image_size[1]
    marks = []
    for index, det in enumerate(detections):
        x0, y0, x1, y1 = (float(v) for v in det["box"])
        colour = label_color(str(det["label"])) if colours is None else tuple(colours[index])
        marks.append({"box": [round(x0 * sx, 2), round(y0 * sy, 2), round(x1 * sx, 2), round(y1 * sy, 2)],
                      "colour": [int(c) for c in colour], "caption": f"{det['label']} {float(det['score']):.2f}"})
    return marks


def cost_marks(dense: Sequence[Mapping], pruned: Sequence[Mapping], diff, image_size: tuple[int, int],
               display_size: tuple[int, int]) -> list[dict]:
    """What pruning cost, as :func:`detection_marks` in :data:`COST_COLOURS` (:data:`COST_LEGEND`): the pruned
    detections that kept or moved a dense one, the dense ones lost, and the pruned ones new (``diff``:
    :func:`bavit.engine.pruning_cost.match_detections`)."""
    shown = ([(pruned[j], "kept") for _, j, _ in diff.kept] + [(pruned[j], "moved") for _, j, _ in diff.moved]
             + [(dense[i], "lost") for i in diff.lost] + [(pruned[j], "new") for j in diff.new])
    return detection_marks([det for det, _ in shown], image_size, display_size,
                           colours=[COST_COLOURS[kind] for _, kind in shown])


def legend_html(items: Mapping[str, RGB]) -> str:
    """Inline HTML legend: a coloured square and a name per item."""
    spans = (
        f'<span style="display:inline-block;margin-right:12px"><span style="display:inline-block;width:12px;'
        f'height:12px;background:rgb{tuple(rgb)};border:1px solid #444;vertical-align:middle;margin-right:4px">'
        f"</span>{name}</span>"
        for name, rgb in items.items()
    )
    return '<div class="bavit-legend" style="font-size:0.85em">' + "".join(spans) + "</div>"


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
