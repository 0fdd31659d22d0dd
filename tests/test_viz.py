"""Drawing helpers: exact overlay colours at known cells, detection boxes, the sparsity curve markers."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bavit.app import viz
from bavit.engine.metrics import FN, FP, IGNORED, TN, TP, confusion_cells


def blend(pixel, colour, alpha):
    return tuple(int(np.rint((1 - alpha) * p + alpha * c)) for p, c in zip(pixel, colour, strict=True))


GREY = (100, 100, 100)


def grey_image(width=240, height=240):
    return Image.new("RGB", (width, height), GREY)


def test_cell_index_matches_label_layout():
    # 10 rows over 4 cells: row i lies in cell floor(i * 4 / 10)
    assert viz.cell_index(10, 4).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert viz.cell_index(384, 24).tolist() == [i // 16 for i in range(384)]


def test_grid_overlay_colours_at_known_cells():
    grid = np.zeros((24, 24), dtype=bool)
    grid[3, 5] = True  # FG before and after CCA
    before = grid.copy()
    grid[10, 20] = True  # flipped by CCA
    out = np.asarray(viz.grid_overlay(grey_image(), grid, before=before, lines=False))
    cell = 10  # 240 px / 24 cells
    centre = lambda r, c: tuple(out[r * cell + cell // 2, c * cell + cell // 2])
    fg_rgb, fg_alpha = viz.GRID_PALETTE[viz.FG]
    bg_rgb, bg_alpha = viz.GRID_PALETTE[viz.BG]
    fl_rgb, fl_alpha = viz.GRID_PALETTE[viz.FLIPPED]
    assert centre(3, 5) == blend(GREY, fg_rgb, fg_alpha)
    assert centre(10, 20) == blend(GREY, fl_rgb, fl_alpha)
    assert centre(0, 0) == blend(GREY, bg_rgb, bg_alpha)
    # the whole FG cell is tinted and nothing outside it
    assert (out[30:40, 50:60] == blend(GREY, fg_rgb, fg_alpha)).all()
    assert (out[29, 50:60] == blend(GREY, bg_rgb, bg_alpha)).all()
    # three distinct colours
    assert len({centre(3, 5), centre(10, 20), centre(0, 0)}) == 3


def test_grid_overlay_non_square_image_and_lines():
    grid = np.zeros((2, 4), dtype=bool)
    grid[1, 3] = True
    out = np.asarray(viz.grid_overlay(grey_image(80, 20), grid, lines=True))
    assert out.shape == (20, 80, 3)
    fg_rgb, fg_alpha = viz.GRID_PALETTE[viz.FG]
    fg = blend(GREY, fg_rgb, fg_alpha)
    assert tuple(out[15, 70]) == fg  # bottom-right cell is rows 10..19, cols 60..79
    # cell borders (first row / column of a cell) are lightened towards white
    line = tuple(int(np.rint(v * (1 - viz.LINE_ALPHA) + 255 * viz.LINE_ALPHA)) for v in fg)
    assert tuple(out[15, 60]) == line
    assert tuple(out[10, 70]) == line


def test_grid_classes_flags_only_flipped_cells():
    before = np.array([[1, 0], [0, 0]], dtype=bool)
    after = np.array([[1, 1], [0, 0]], dtype=bool)
    assert viz.grid_classes(after, before).tolist() == [[viz.FG, viz.FLIPPED], [viz.BG, viz.BG]]
    with pytest.raises(ValueError, match="differ in shape"):
        viz.grid_classes(after, np.zeros((3, 3), dtype=bool))


def test_confusion_overlay_colours():
    gt = np.array([[1, 1], [0, 0]])
    pred = np.array([[1, 0], [1, 0]], dtype=bool)
    assert confusion_cells(pred, gt).tolist() == [[TP, FN], [FP, TN]]
    out = np.asarray(viz.confusion_overlay(grey_image(20, 20), gt, pred, lines=False))
    pal = viz.CONFUSION_PALETTE
    assert tuple(out[5, 5]) == blend(GREY, *pal[TP])
    assert tuple(out[5, 15]) == blend(GREY, *pal[FN])
    assert tuple(out[15, 5]) == blend(GREY, *pal[FP])
    assert tuple(out[15, 15]) == blend(GREY, *pal[TN])
    ignored = np.asarray(viz.confusion_overlay(grey_image(20, 10), np.array([[-100, 1]]), np.array([[True, True]]),
                                               lines=False))
    assert tuple(ignored[5, 5]) == blend(GREY, *pal[IGNORED]) and tuple(ignored[5, 15]) == blend(GREY, *pal[TP])


def test_fit_image_downscales_keeping_aspect():
    assert viz.fit_image(grey_image(2000, 1000), 512).size == (512, 256)
    small = grey_image(100, 50)
    assert viz.fit_image(small, 512).size == (100, 50)
    assert viz.fit_image(Image.new("L", (10, 10)), 512).mode == "RGB"


def test_detection_marks_scale_boxes_to_the_display_size():
    dets = [{"box": (100.0, 50.0, 300.0, 150.0), "label": "cat", "score": 0.914}]
    marks = viz.detection_marks(dets, image_size=(400, 200), display_size=(200, 100))
    # box (100,50)-(300,150) at half scale -> (50,25)-(150,75), in the label's colour, captioned "label score"
    assert marks == [{"box": [50.0, 25.0, 150.0, 75.0], "colour": list(viz.label_color("cat")), "caption": "cat 0.91"}]
    assert viz.detection_marks(dets, (400, 200), (400, 100), colours=[(1, 2, 3)])[0]["box"] == [100.0, 25.0, 300.0, 75.0]


@pytest.mark.slow
def test_label_color_is_stable_across_processes_and_distinct():
    """The colour of a class name must not depend on Python's per-process string hash."""
    code = "from bavit.app.viz import label_color; print(*label_color('dog'))"
    seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2")}
    assert seen == {" ".join(map(str, viz.label_color("dog")))}
    assert viz.label_color("dog") != viz.label_color("cat")
    assert max(viz.label_color("dog")) >= 200  # saturated and bright enough to read on a photo


def test_curve_plot_marks_current_point_at_data_position():
    thresholds = np.linspace(0, 1, 11)
    plot = viz.curve_plot(thresholds, 100 * thresholds, 1 + thresholds)
    assert plot.base.dtype == np.uint8 and plot.base.ndim == 3
    image = plot.with_points((0.5, 30.0, 1.5), measured=[(0.2, 1.2)])
    assert image.size == (plot.base.shape[1], plot.base.shape[0])
    diff = np.abs(np.asarray(image, dtype=int) - plot.base.astype(int)).sum(-1) > 0
    x, y = plot._pixel(plot.left, 0.5, 30.0)  # off the curve, so the marker changes pixels
    assert diff[int(round(y)), int(round(x))]
    assert tuple(np.asarray(image)[int(round(y)), int(round(x))]) == (31, 119, 180)
    mx, my = plot._pixel(plot.right, 0.2, 1.2)
    assert tuple(np.asarray(image)[int(round(my)), int(round(mx))]) == (44, 160, 44)
    # the marker lies inside the axes, left of centre for threshold 0.2
    assert 0 < mx < x < image.width


def test_curves_drawn_from_many_threads_are_those_drawn_one_by_one(monkeypatch):
    """matplotlib is not thread-safe and the app's events run in a thread pool: every rendering holds the lock."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [(np.linspace(0, 1, 11), 100 * np.linspace(0, 1, 11) ** power, 1 + np.linspace(0, 1, 11) * power)
             for power in (0.5, 1.0, 2.0, 3.0)]
    alone = [viz.curve_plot(*case).base for case in cases]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda index: viz.curve_plot(*cases[index % 4]).base, range(16)))
    assert all(np.array_equal(base, alone[index % 4]) for index, base in enumerate(together))

    held = []
    render = viz._render
    monkeypatch.setattr(viz, "_render", lambda *args: held.append(viz._MATPLOTLIB_LOCK.locked()) or render(*args))
    viz.curve_plot(*cases[0])
    assert held == [True] and not viz._MATPLOTLIB_LOCK.locked()


def test_legend_html_lists_items():
    html = viz.legend_html(viz.GRID_LEGEND)
    assert "flipped to FG by CCA" in html and "rgb(230, 0, 230)" in html


def test_cost_boxes_are_marked_in_their_outcome_colours():
    from bavit.engine.pruning_cost import match_detections

    dense = [{"box": (10, 10, 40, 40), "label": "dog", "score": 0.9}, {"box": (60, 60, 90, 90), "label": "cat", "score": 0.8}]
    pruned = [{"box": (10, 10, 40, 40), "label": "dog", "score": 0.9}, {"box": (60, 10, 90, 40), "label": "cup", "score": 0.7}]
    diff = match_detections(dense, pruned)  # the dog kept, the cat lost, the cup new
    marks = viz.cost_marks(dense, pruned, diff, (100, 100), (100, 100))
    assert [(m["caption"], tuple(m["colour"]), m["box"][:2]) for m in marks] == [
        ("dog 0.90", viz.COST_COLOURS["kept"], [10.0, 10.0]), ("cat 0.80", viz.COST_COLOURS["lost"], [60.0, 60.0]),
        ("cup 0.70", viz.COST_COLOURS["new"], [60.0, 10.0])]
    assert set(viz.COST_COLOURS.values()) == set(viz.COST_LEGEND.values())
