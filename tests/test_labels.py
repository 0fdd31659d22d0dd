import json

import numpy as np
import pytest
import torch
from PIL import Image

from bavit.core.config import BAViTConfig
from bavit.core.labels import (
    BOX_TAU,
    FG_FRAC,
    IGNORE_INDEX,
    VOID_VALUE,
    area_fractions,
    fg_from_box_scores,
    fg_from_fractions,
    labels_from_boxes,
    labels_from_mask,
)
from bavit.data.records import Instance, Record, coco_records
from bavit.errors import DataError


def test_mask_rule_is_strictly_more_than_ten_percent():
    # 240x240 image, 24x24 grid: each patch is 10x10 = 100 pixels, so 10 pixels are exactly 10%.
    mask = np.zeros((240, 240), dtype=bool)
    mask[0, :10] = True  # patch (0, 0): exactly 10 pixels -> not FG
    mask[10, 10:20] = True
    mask[11, 10] = True  # patch (1, 1): 11 pixels -> FG
    labels = labels_from_mask(mask, (24, 24))
    assert labels[0, 0] == 0
    assert labels[1, 1] == 1
    assert int(labels.sum()) == 1


def test_mask_rule_at_384_boundary_25_vs_26_pixels():
    # At the model's 384x384 input a patch has 256 pixels: 25 (9.77%) is BG, 26 (10.16%) is FG.
    mask = np.zeros((384, 384), dtype=bool)
    mask.reshape(24, 16, 24, 16)[3, :, 5, :].flat[:25] = True
    mask.reshape(24, 16, 24, 16)[7, :, 9, :].flat[:26] = True
    labels = labels_from_mask(mask)
    assert labels.dtype == torch.int64 and labels.shape == (24, 24)
    assert labels[3, 5] == 0 and labels[7, 9] == 1 and int(labels.sum()) == 1


def test_mask_labels_follow_the_square_resize_of_a_non_square_image():
    # 48 rows x 96 columns on a 24x24 grid: each token covers 2 rows x 4 columns of the original image.
    mask = np.zeros((48, 96), dtype=bool)
    mask[10:12, 40:44] = True  # exactly token (5, 10)
    labels = labels_from_mask(mask, (24, 24))
    assert labels.nonzero().tolist() == [[5, 10]]


def test_fractional_pixels_are_weighted_by_area():
    # 36x36 image on a 24x24 grid: a token covers 1.5x1.5 pixels (area 2.25).
    mask = np.zeros((36, 36), dtype=bool)
    mask[1, 0] = True  # rows [1, 2): half in token row 0, half in token row 1 -> 0.5 / 2.25 = 22.2% each
    labels = labels_from_mask(mask, (24, 24))
    assert labels[:2, :2].tolist() == [[1, 0], [1, 0]]
    assert labels_from_mask(mask, (24, 24), fg_frac=0.23).sum() == 0
    centre = np.zeros((36, 36), dtype=bool)
    centre[1, 1] = True  # a quarter of the pixel in each of four tokens -> 0.25 / 2.25 = 11.1% each
    assert labels_from_mask(centre, (24, 24))[:2, :2].tolist() == [[1, 1], [1, 1]]
    assert labels_from_mask(centre, (24, 24), fg_frac=0.12).sum() == 0


def test_void_counts_as_neither_and_mostly_void_tokens_are_ignored():
    seg = np.zeros((240, 240), dtype=np.uint8)
    # token (0,0): 60 void + 10 object pixels -> mostly void? no: 60% void > 50% -> ignored
    seg[0:6, 0:10] = 255
    seg[6, 0:10] = 3
    # token (0,1): 20 void + 9 object of 100: 9/80 = 11.25% of the non-void pixels -> FG (9% of all pixels)
    seg[0:2, 10:20] = 255
    seg[2, 10:19] = 1
    # token (0,2): 30 void + 7 object: 7/70 = 10% exactly -> BG
    seg[0:3, 20:30] = 255
    seg[3, 20:27] = 2
    void = seg == VOID_VALUE  # a VOC index image: 0 background, 255 void, else an object
    fg = (seg > 0) & ~void
    labels = labels_from_mask(fg, (24, 24), void_mask=void)
    assert labels[0, 0] == IGNORE_INDEX
    assert labels[0, 1] == 1
    assert labels[0, 2] == 0
    assert int((labels == IGNORE_INDEX).sum()) == 1


def test_empty_mask_is_all_background():
    labels = labels_from_mask(np.zeros((100, 100), dtype=bool), (24, 24))
    assert int(labels.abs().sum()) == 0


def test_box_rules_literal_iou_versus_coverage():
    # A 64x64 box aligned to the 16px grid of a 384x384 image covers 4x4 tokens fully.
    box = [(64, 128, 128, 192)]
    coverage = labels_from_boxes(box, (384, 384), rule="coverage", tau=0.5)
    assert coverage.sum() == 16 and coverage[8:12, 4:8].all()
    # IoU of a fully covered patch is 256 / 4096 = 0.0625 < 0.5, so the literal rule labels nothing FG ...
    assert labels_from_boxes(box, (384, 384), rule="iou", tau=0.5).sum() == 0
    # ... and fires exactly when tau <= 1/16.
    assert labels_from_boxes(box, (384, 384), rule="iou", tau=0.0625).sum() == 16
    # A 16x16 box on a patch is the only case where IoU reaches 1.
    assert labels_from_boxes([(16, 16, 32, 32)], (384, 384), rule="iou", tau=1.0).nonzero().tolist() == [[1, 1]]


def test_box_coverage_boundary_and_original_coordinates():
    # 768x384 image (w, h): a token is 32x16 original pixels. A box covering half of token (2, 3) in x.
    half = labels_from_boxes([(96, 32, 112, 48)], (768, 384), rule="coverage", tau=0.5)
    assert half.nonzero().tolist() == [[2, 3]]
    under = labels_from_boxes([(96, 32, 111, 48)], (768, 384), rule="coverage", tau=0.5)
    assert under.sum() == 0


def test_unknown_box_rule_is_rejected():
    with pytest.raises(ValueError, match="box rule"):
        labels_from_boxes([], (10, 10), rule="jaccard")


def _write_coco(tmp_path, annotations, images=({"id": 1, "file_name": "a.png", "width": 48, "height": 48},)):
    (tmp_path / "img").mkdir()
    for info in images:
        Image.new("RGB", (info["width"], info["height"]), (90, 120, 30)).save(tmp_path / "img" / info["file_name"])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": list(images), "annotations": annotations,
                               "categories": [{"id": 1, "name": "thing"}]}))
    return ann, tmp_path / "img"


def test_coco_crowd_rle_counts_as_foreground(tmp_path):
    from pycocotools import mask as mask_utils

    crowd = np.zeros((48, 48), dtype=np.uint8, order="F")
    crowd[0:8, 0:8] = 1  # tokens (0..3, 0..3) on a 24x24 grid (2x2 px per token)
    rle = mask_utils.encode(crowd)
    rle["counts"] = rle["counts"].decode()
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": rle, "area": 64.0, "bbox": [0, 0, 8, 8]},
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 16.0, "bbox": [40, 40, 4, 4],
         "segmentation": [[40, 40, 44, 40, 44, 44, 40, 44]]},
    ]
    ann, images = _write_coco(tmp_path, anns)
    (record,) = coco_records(ann, images)
    labels = record.labels((24, 24))
    assert labels[0:4, 0:4].all()
    assert labels[20:22, 20:22].all()
    assert int(labels.sum()) == 16 + 4
    # Crowds are excluded from the object keep rate, like COCOeval ignores them.
    assert len(record.instance_patches((24, 24))) == 1


def test_coco_image_without_objects_is_all_background(tmp_path):
    ann, images = _write_coco(tmp_path, [])
    (record,) = coco_records(ann, images)
    assert int(record.labels((24, 24)).sum()) == 0
    assert record.instance_patches((24, 24)) == []


def test_coco_missing_image_file_is_a_clear_error(tmp_path):
    ann, images = _write_coco(tmp_path, [])
    (images / "a.png").unlink()
    with pytest.raises(DataError, match="1 of 1 images .* missing"):
        coco_records(ann, images)


def test_coco_empty_or_invalid_annotation_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    (tmp_path / "img").mkdir()
    with pytest.raises(DataError, match="not a valid COCO annotation file"):
        coco_records(bad, tmp_path / "img")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DataError, match="lists no images"):
        coco_records(empty, tmp_path / "img")


def test_corrupt_image_is_a_clear_error(tmp_path):
    ann, images = _write_coco(tmp_path, [])
    (images / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (record,) = coco_records(ann, images)
    with pytest.raises(DataError, match="a.png"):
        record.load_image()


def test_a_patch_is_fg_above_ten_percent_by_default():
    """Three 20x20 patches with 40 (exactly 10%), 41 and 0 object pixels: only the middle one is FG, by the rule's
    default and by a config's default alike."""
    mask = np.zeros((20, 60), dtype=bool)
    mask.flat[np.flatnonzero(np.ones((20, 20)))[:40]] = True  # 40 pixels of the first patch (its first two rows)
    mask[:2, 20:40] = True
    mask[2, 20] = True  # 41 pixels of the second patch
    assert labels_from_mask(mask, (1, 3)).tolist() == [[0, 1, 0]]
    assert labels_from_mask(mask, (1, 3), fg_frac=BAViTConfig().fg_frac).tolist() == [[0, 1, 0]]


def test_the_box_threshold_is_defined_once():
    import inspect

    from bavit.cli import build_parser
    from bavit.data.augment import CachedSamples
    from bavit.engine.evaluate import predict_probs
    from bavit.engine.finetune import FinetuneConfig
    from bavit.engine.train import TrainConfig

    assert BOX_TAU == 0.5
    assert inspect.signature(labels_from_boxes).parameters["tau"].default is BOX_TAU
    for function in (Record.labels, CachedSamples, predict_probs):
        assert inspect.signature(function).parameters["box_tau"].default is BOX_TAU, function
    assert TrainConfig().box_tau is BOX_TAU and FinetuneConfig().box_tau is BOX_TAU
    assert build_parser().parse_args(["train"]).box_tau is BOX_TAU


def test_the_rule_allows_float64_error_at_exactly_ten_percent():
    # 30x40 image on a 4x4 grid: token (0, 0) is 7.5 rows x 10 columns = 75 pixels. Seven whole pixels plus the
    # half of pixel (7, 0) that lies in it are 7.5 pixels, exactly 10%, which float64 sums to 0.10000000000000002.
    mask = np.zeros((30, 40), dtype=bool)
    mask[0, 0:7] = True
    mask[7, 0] = True
    fractions = area_fractions(mask, (4, 4))
    assert fractions[0, 0] > 0.1  # the float error the tolerance is there for
    assert not fg_from_fractions(fractions, FG_FRAC)[0, 0]
    assert labels_from_mask(mask, (4, 4))[0, 0] == 0
    assert fg_from_fractions(np.array([0.1 + 2e-9]), FG_FRAC).tolist() == [True]


def test_the_tolerance_is_below_float32_resolution():
    # augment.py compares float32 fractions: it used the plain ``>`` before it called fg_from_fractions, and the
    # 1e-9 changes nothing there (0.1 + 1e-9 rounds to float32 0.1); likewise ``>=`` for the box rule at 0.5 / 0.3.
    tenth = torch.tensor(0.1, dtype=torch.float32)
    around = torch.stack([torch.nextafter(tenth, torch.tensor(0.0)), tenth, torch.nextafter(tenth, torch.tensor(1.0))])
    assert fg_from_fractions(around, 0.1).tolist() == (around > 0.1).tolist() == [False, False, True]
    for tau in (0.5, 0.3):
        value = torch.tensor(tau, dtype=torch.float32)
        around = torch.stack([torch.nextafter(value, torch.tensor(0.0)), value, torch.nextafter(value, torch.tensor(1.0))])
        assert fg_from_box_scores(around, tau).tolist() == (around >= tau).tolist() == [False, True, True]


def test_instance_patches_follow_the_rule_at_the_float64_boundary(tmp_path):
    # The exactly-10% token of test_the_rule_allows_float64_error_at_exactly_ten_percent, plus a token at 10.7%
    # (8 of 75 pixels) so that the instance has a FG patch and the "largest patch" fallback stays out of it.
    mask = np.zeros((30, 40), dtype=bool)
    mask[0, 0:7] = True
    mask[7, 0] = True
    mask[25, 30:38] = True
    record = Record(tmp_path / "unused.png", 40, 30, [Instance((0.0, 0.0, 40.0, 30.0), float(mask.sum()), False,
                                                               lambda: mask)])
    ((_, patches),) = record.instance_patches((4, 4))
    assert patches.nonzero() == (np.array([3]), np.array([3]))
    assert labels_from_mask(mask, (4, 4)).nonzero().tolist() == [[3, 3]]
