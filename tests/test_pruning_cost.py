"""What pruning cost an image without ground truth (bavit.engine.pruning_cost): dense detections matched to pruned
ones on hand-made boxes with exact IoUs, the summary line, and COCOeval's AP of pruned against dense."""
import numpy as np
import pytest

from bavit.engine.pruning_cost import ap_against_dense, match_detections, summary_line


def det(x0, y0, x1, y1, label, score):
    return {"box": (x0, y0, x1, y1), "label": label, "score": score}


DENSE = [
    det(0, 0, 10, 10, "dog", 0.9),     # 0: found again exactly -> kept (IoU 1)
    det(20, 0, 30, 10, "cat", 0.8),    # 1: found shifted by 2 px -> moved (IoU 80/120 = 2/3)
    det(40, 0, 50, 10, "dog", 0.62),   # 2: not found -> lost
    det(60, 0, 70, 10, "car", 0.7),    # 3: found as another label only -> lost
    det(80, 0, 90, 10, "cat", 0.75),   # 4: found, 0.5 px off in x (IoU 95/105 > 0.9) -> kept
]
PRUNED = [
    det(22, 0, 32, 10, "cat", 0.85),   # 0 -> dense 1
    det(0, 0, 10, 10, "dog", 0.95),    # 1 -> dense 0
    det(60, 0, 70, 10, "truck", 0.7),  # 2: a label the dense detector did not give here -> new
    det(80.5, 0, 90.5, 10, "cat", 0.6),  # 3 -> dense 4
    det(200, 200, 210, 210, "dog", 0.3),  # 4: nowhere near -> new
]


def test_matching_on_hand_made_boxes():
    diff = match_detections(DENSE, PRUNED)
    assert [(i, j) for i, j, _ in diff.kept] == [(0, 1), (4, 3)]
    assert diff.kept[0][2] == 1.0 and diff.kept[1][2] == pytest.approx(95 / 105)
    assert [(i, j) for i, j, _ in diff.moved] == [(1, 0)] and diff.moved[0][2] == pytest.approx(2 / 3)
    assert diff.lost == [2, 3] and diff.new == [2, 4] and diff.dense_count == 5
    assert summary_line(diff, DENSE) == "kept 2 of 5 dense detections, 1 moved, 2 lost: a dog at 0.62, a car at 0.70, 2 new"


def test_the_more_confident_pruned_detection_takes_the_match():
    dense = [det(0, 0, 10, 10, "dog", 0.9)]
    pruned = [det(1, 0, 11, 10, "dog", 0.4), det(0, 0, 10, 10, "dog", 0.8)]  # the second is more confident
    diff = match_detections(dense, pruned)
    assert [(i, j) for i, j, _ in diff.kept] == [(0, 1)] and diff.new == [0] and not diff.moved
    # below the match IoU (0.5) the same label is not the same object
    far = match_detections(dense, [det(6, 0, 16, 10, "dog", 0.9)])  # IoU 40 / 160 = 0.25
    assert far.lost == [0] and far.new == [0]


def test_empty_sides_and_their_lines():
    assert summary_line(match_detections([], []), []) == "the dense detector found nothing here"
    only_new = match_detections([], [det(0, 0, 1, 1, "dog", 0.5)])
    assert only_new.new == [0] and summary_line(only_new, []) == "the dense detector found nothing here; the pruned one 1 new"
    all_lost = match_detections(DENSE[:1], [])
    assert all_lost.lost == [0] and summary_line(all_lost, DENSE[:1]) == "kept 0 of 1 dense detection, 1 lost: a dog at 0.90"


def rows(image_id, detections):
    """[n, 7] rows (image_id, x, y, w, h, score, category_id) from (x0, y0, x1, y1, category, score)."""
    return np.array([[image_id, x0, y0, x1 - x0, y1 - y0, score, category]
                     for x0, y0, x1, y1, category, score in detections], dtype=np.float64).reshape(-1, 7)


def test_ap_against_dense_is_one_for_the_same_detections_and_falls_with_misses():
    dense = [rows(1, [(0, 0, 40, 40, 18, 0.9), (50, 50, 90, 90, 3, 0.8), (0, 50, 40, 90, 18, 0.3)]),
             rows(2, [(10, 10, 60, 60, 1, 0.7)])]
    same = ap_against_dense(dense, dense, [1, 2])
    assert same["mAP"] == pytest.approx(1.0) and same["AP50"] == pytest.approx(1.0)
    # the pruned detector misses the car of image 1: one of three dense objects (score >= 0.5) lost
    pruned = [rows(1, [(0, 0, 40, 40, 18, 0.9), (0, 50, 40, 90, 18, 0.3)]), rows(2, [(10, 10, 60, 60, 1, 0.7)])]
    missing = ap_against_dense(dense, pruned, [1, 2])
    # COCOeval averages over categories: 18 and 1 found (AP 1; the 0.3 result of 18 is a false positive ranked
    # after its hit, as the 0.3 dense detection is no ground truth), 3 lost (AP 0)
    assert missing["mAP"] == pytest.approx(2 / 3) and missing["AP50"] == pytest.approx(2 / 3)
    assert ap_against_dense(dense, dense, [1, 2], min_score=0.95)["mAP"] is None  # nothing dense that sure
