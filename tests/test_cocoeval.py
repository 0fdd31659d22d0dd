"""The COCOeval wrapper (bavit.engine.cocoeval) is exact on hand-made cases, and the harness' conversion from
detector outputs to COCO results loses nothing."""
import numpy as np
import pytest
import torch

from bavit.data.coco import label_to_category, load_coco
from bavit.engine.cocoeval import STAT_NAMES, evaluate_bbox, result_rows, to_coco_results
from conftest import coco91_id2label, gt_as_detections, write_tiny_coco


def test_ground_truth_through_the_harness_conversions_gives_ap_1_on_shared_coco(coco_root):
    """The harness' own path from detector outputs to COCO results (xyxy boxes, detector label ids ->
    ``to_coco_results`` -> the ``[N, 7]`` rows) loses nothing: the ground truth put through it scores AP 1."""
    from bavit.box_ops import box_xywh_to_xyxy

    coco = load_coco(coco_root / "annotations" / "instances_val2017.json")
    image_ids = sorted(coco.getImgIds())
    label_map = label_to_category(coco91_id2label(coco), coco)
    rows = []
    for image_id in image_ids:
        found = gt_as_detections(coco, [image_id])
        if not found:
            continue
        boxes = box_xywh_to_xyxy(torch.tensor([d["bbox"] for d in found], dtype=torch.float64))
        rows.append(result_rows(image_id, torch.ones(len(found)), torch.tensor([d["category_id"] for d in found]),
                                 boxes, label_map))
    stats = evaluate_bbox(coco, np.concatenate(rows), image_ids)
    assert set(stats) == set(STAT_NAMES)
    assert stats["mAP"] == 1.0 and stats["AP50"] == 1.0 and stats["AP75"] == 1.0 and stats["AP_small"] == 1.0


def test_cocoeval_wrapper_is_exact_on_a_hand_made_set(tmp_path):
    coco = load_coco(write_tiny_coco(tmp_path))
    assert evaluate_bbox(coco, gt_as_detections(coco, [1, 2]), [1, 2])["mAP"] == 1.0
    # Only the first of the two cats found: cat recall 0.5 at precision 1 -> AP = 51/101 (COCO's 101 recall
    # points 0, 0.01, ..., 0.5 have precision 1, the rest 0); dog AP = 1.
    one_cat = [d for d in gt_as_detections(coco, [1, 2]) if d["bbox"] != [30, 20, 30, 25]]
    stats = evaluate_bbox(coco, one_cat, [1, 2])
    assert stats["mAP"] == pytest.approx((51 / 101 + 1.0) / 2, abs=1e-12)
    # The compact [N, 7] array form the harness accumulates gives the same numbers.
    rows = np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in one_cat], dtype=np.float64)
    assert evaluate_bbox(coco, rows, [1, 2]) == stats
    # Evaluating image 2 alone: image 1's cats are not misses.
    assert evaluate_bbox(coco, [d for d in one_cat if d["image_id"] == 2], [2])["mAP"] == pytest.approx(1.0, abs=1e-12)
    # A box shifted to IoU 0.6 counts at AP50 but not at AP75.
    shifted = [{"image_id": 2, "category_id": 18, "bbox": [10 + 10, 10, 40, 30], "score": 0.9}]  # IoU 30/50
    stats = evaluate_bbox(coco, shifted, [2])
    assert stats["AP50"] == pytest.approx(1.0, abs=1e-12) and stats["AP75"] == 0.0
    # No detections at all -> 0, not a pycocotools crash; no large objects in the set -> None.
    assert evaluate_bbox(coco, [], [1, 2])["mAP"] == 0.0
    assert stats["AP_large"] is None


def test_coco_results_are_xywh_in_pixels_and_drop_unmapped_labels():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 5.0, 5.0]])
    results = to_coco_results(7, torch.tensor([0.9, 0.8]), torch.tensor([17, 12]), boxes, {17: 17})
    assert results == [{"image_id": 7, "category_id": 17, "bbox": [10.0, 20.0, 40.0, 60.0], "score": pytest.approx(0.9)}]
