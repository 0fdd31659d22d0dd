"""bavit.box_ops: exact, hand-computed cases for every conversion (values chosen exactly representable)."""
import pytest
import torch

from bavit.box_ops import (
    as_boxes,
    box_clip_xyxy,
    box_cxcywh_to_xyxy,
    box_normalize,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
)

# One box in every format: COCO (x, y, w, h) = (10, 20, 30, 40) on a 64 x 80 (width x height) image.
XYWH = [[10.0, 20.0, 30.0, 40.0]]
XYXY = [[10.0, 20.0, 40.0, 60.0]]
CXCYWH = [[25.0, 40.0, 30.0, 40.0]]
CXCYWH_NORMALISED = [[25 / 64, 40 / 80, 30 / 64, 40 / 80]]  # all exact binary fractions
ZERO_SIZE_XYWH = [[5.0, 7.0, 0.0, 0.0]]  # a degenerate box: one point
ZERO_SIZE_XYXY = [[5.0, 7.0, 5.0, 7.0]]


def exact(actual: torch.Tensor, expected: list, dtype: torch.dtype = torch.float64) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=dtype), rtol=0, atol=0)


def test_each_conversion_by_hand():
    exact(box_xywh_to_xyxy(XYWH), XYXY)
    exact(box_xyxy_to_xywh(XYXY), XYWH)
    exact(box_xyxy_to_cxcywh(XYXY), CXCYWH)
    exact(box_cxcywh_to_xyxy(CXCYWH), XYXY)
    exact(box_normalize(box_xyxy_to_cxcywh(XYXY), (64, 80)), CXCYWH_NORMALISED)


def test_round_trips_are_exact():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.5, 3.25, 6.5, 11.75], [100.0, 50.0, 612.0, 431.5]])
    exact(box_xywh_to_xyxy(box_xyxy_to_xywh(boxes)), boxes.tolist(), torch.float32)
    exact(box_xyxy_to_xywh(box_xywh_to_xyxy(boxes)), boxes.tolist(), torch.float32)
    exact(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes)), boxes.tolist(), torch.float32)
    exact(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes.tolist(), torch.float32)


def test_zero_size_box():
    exact(box_xywh_to_xyxy(ZERO_SIZE_XYWH), ZERO_SIZE_XYXY)
    exact(box_xyxy_to_xywh(ZERO_SIZE_XYXY), ZERO_SIZE_XYWH)
    exact(box_xyxy_to_cxcywh(ZERO_SIZE_XYXY), [[5.0, 7.0, 0.0, 0.0]])
    exact(box_cxcywh_to_xyxy([[5.0, 7.0, 0.0, 0.0]]), ZERO_SIZE_XYXY)


def test_clip_to_the_image():
    boxes = [[-5.0, -1.0, 70.0, 90.0],  # larger than the 64 x 80 image on every side
             [10.0, 20.0, 40.0, 60.0],  # inside: unchanged
             [70.0, 10.0, 90.0, 20.0]]  # wholly right of the image: collapses to zero width at x = 64
    exact(box_clip_xyxy(boxes, (64, 80)), [[0.0, 0.0, 64.0, 80.0], [10.0, 20.0, 40.0, 60.0], [64.0, 10.0, 64.0, 20.0]])


def test_dtype_device_and_shape_are_kept():
    for dtype in (torch.float32, torch.float64, torch.float16):
        boxes = torch.tensor(XYXY, dtype=dtype)
        for out in (box_xyxy_to_xywh(boxes), box_xywh_to_xyxy(boxes), box_xyxy_to_cxcywh(boxes),
                    box_cxcywh_to_xyxy(boxes), box_clip_xyxy(boxes, (64, 80)), box_normalize(boxes, (64, 80))):
            assert out.dtype == dtype and out.shape == (1, 4)
    batched = torch.tensor(XYWH * 6).reshape(2, 3, 4)  # [..., 4] works too
    exact(box_xywh_to_xyxy(batched), [[XYXY[0]] * 3] * 2, torch.float32)


def test_plain_numbers_become_float64_and_empty_is_0_by_4():
    boxes = as_boxes([(1, 2, 3, 4), [0.5, 0.25, 1, 2]])  # ints and floats, tuples and lists (COCO JSON)
    assert boxes.dtype == torch.float64 and boxes.tolist() == [[1.0, 2.0, 3.0, 4.0], [0.5, 0.25, 1.0, 2.0]]
    for empty in (box_xywh_to_xyxy([]), box_xyxy_to_cxcywh(box_clip_xyxy([], (4, 4)))):
        assert empty.shape == (0, 4) and empty.dtype == torch.float64
    # float64 arithmetic is Python's own: 0.1 + 0.2 is 0.30000000000000004 here too, not float32's 0.3.
    assert box_xywh_to_xyxy([[0.1, 0.0, 0.2, 0.0]])[0, 2].item() == 0.1 + 0.2


def test_a_tensor_is_not_copied_to_float64():
    boxes = torch.tensor(XYXY)
    assert as_boxes(boxes) is boxes
    with pytest.raises(ValueError, match="a box is 4 numbers"):
        as_boxes([[1.0, 2.0, 3.0]] * 4)  # 12 numbers, but not 4 boxes
