"""GT patch grids for the app: painted masks, per-image stats, COCO instance masks (shared data; skips without)."""
import apphelpers
import numpy as np
import pytest
from PIL import Image

from bavit.app.explorer import Explorer
from bavit.app.session import grid_stats, painted_mask
from bavit.app.session import Controls
from bavit.core.labels import labels_from_mask
from bavit.data.coco import CocoGroundTruth


def test_painted_mask_from_editor_layers():
    assert painted_mask(None) is None
    layer = np.zeros((48, 48, 4), dtype=np.uint8)
    assert painted_mask({"background": None, "layers": [layer], "composite": None}) is None  # nothing painted
    layer[0:24, 0:12, :] = (255, 59, 48, 255)
    mask = painted_mask({"background": None, "layers": [layer], "composite": None})
    assert mask.shape == (48, 48) and mask.sum() == 24 * 12
    # on a 2x2 grid the painted 24x12 px are 50% of the top-left 24x24 cell -> only that cell is FG
    assert labels_from_mask(mask, grid=(2, 2)).tolist() == [[1, 0], [0, 0]]


def test_grid_stats_exact():
    gt = np.array([[1, 1, 0], [0, 0, -100]])
    pred = np.array([[1, 0, 1], [0, 0, 1]], dtype=bool)
    stats = grid_stats(gt, pred)
    assert (stats["tp"], stats["fp"], stats["fn"], stats["tn"]) == (1, 1, 1, 2)  # the ignored cell counts nowhere
    assert stats["token_accuracy"] == pytest.approx(3 / 5)
    assert stats["fg_recall"] == pytest.approx(1 / 2)
    assert stats["fg_precision"] == pytest.approx(1 / 2)
    assert stats["fg_iou"] == pytest.approx(1 / 3)
    empty = grid_stats(np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2), dtype=bool))
    assert empty["fg_recall"] is None and empty["token_accuracy"] == 1.0


@pytest.fixture(scope="module")
def coco(coco_root):
    return CocoGroundTruth(coco_root)


@pytest.fixture(scope="module")
def explorer(coco):
    from bavit.predictor import Predictor

    return Explorer(Predictor(bavit=apphelpers.random_bavit_checkpoint(), detector=None), coco=coco)


def test_coco_gt_grid_is_the_label_rule_on_the_union_of_instance_masks(coco, coco_root):
    from pycocotools.coco import COCO

    path = coco.examples(1)[0]
    entry = coco.lookup(path.name)
    assert entry.split == "val2017" and entry.path == path
    ann = COCO(str(coco_root / "annotations" / "instances_val2017.json"))
    union = np.zeros((entry.height, entry.width), dtype=bool)
    for a in ann.loadAnns(ann.getAnnIds(imgIds=[entry.image_id], iscrowd=None)):
        union |= ann.annToMask(a).astype(bool)
    expected = labels_from_mask(union, grid=(24, 24)).numpy()
    np.testing.assert_array_equal(coco.labels(entry, (24, 24)), expected)
    assert 0 < expected.sum() < 576


def test_coco_match_needs_same_pixels(coco):
    first, second = coco.examples(2)
    entry = coco.lookup(first.name)
    assert coco.match(first.name, Image.open(first)) == entry
    other = Image.open(second).convert("RGB").resize((entry.width, entry.height))
    assert coco.match(first.name, other) is None  # same name and size, different picture
    assert coco.match("not-in-coco.jpg", Image.open(first)) is None


def test_explorer_compares_coco_gt_and_painted_gt(explorer, coco):
    path = coco.examples(1)[0]
    session = explorer.open_image({"path": str(path), "orig_name": path.name})
    assert session.coco is not None and "instance masks" in session.gt_source
    view = explorer.render(session, Controls(threshold=0.5, detect=False))
    stats = grid_stats(session.gt, view["analysis"].grid_cca)
    assert f"{stats['token_accuracy']:.1%}" in view["gt_stats"]
    assert view["gt_confusion"].size == session.display.size
    # an upload without GT: no comparison until the user paints
    upload = explorer.open_image({"path": str(apphelpers.EXAMPLES / "coffee.jpg"), "orig_name": "coffee.jpg"})
    assert upload.gt is None and explorer.render(upload, Controls(detect=False))["gt_confusion"] is None
    width, height = upload.display.size
    layer = np.zeros((height, width, 4), dtype=np.uint8)
    layer[: height // 2, : width // 2, 3] = 255  # the top-left quarter
    assert upload.set_painted_gt({"background": None, "layers": [layer], "composite": None})
    assert upload.gt_source == "painted in the editor"
    assert upload.gt[:12, :12].all() and upload.gt[12:, :].sum() == 0 and upload.gt[:, 12:].sum() == 0
    view = explorer.render(upload, Controls(threshold=0.5, detect=False))
    assert view["gt_confusion"] is not None and "token accuracy" in view["gt_stats"]
