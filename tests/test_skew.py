"""benchmarks.skew: the earlier training preprocessing it measures against the served one, and the calibration
backend comparison, on hand-made images and probabilities (the measured figures are in docs/training.md)."""
import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.skew import (
    PREPROCESSINGS,
    compare_calibration_backends,
    compare_preprocessing,
    training_pixels_before,
)
from bavit.core.config import BAViTConfig
from bavit.core.model import bavit_pixels, build_bavit
from bavit.data.records import coco_records, coco_split
from conftest import blob_probs

CONFIG = BAViTConfig(img_size=32, patch_size=16, depth=1)


def test_the_earlier_training_input_equals_the_served_one_on_flat_colour_only():
    flat = Image.new("RGB", (70, 50), (200, 104, 48))
    torch.testing.assert_close(training_pixels_before(flat, CONFIG), bavit_pixels(flat, CONFIG), rtol=0, atol=1e-6)
    textured = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    before, served = training_pixels_before(textured, CONFIG), bavit_pixels(textured, CONFIG)
    assert before.shape == served.shape == (3, 32, 32) and not torch.allclose(before, served, atol=1e-3)


def test_the_preprocessing_comparison_scores_both_inputs_on_the_same_tokens(synthetic_coco):
    records = coco_records(*coco_split(synthetic_coco, "train2017"))[:3]
    torch.manual_seed(0)
    result = compare_preprocessing(build_bavit(CONFIG), records, batch_size=2)
    assert [row["preprocessing"] for row in result["rows"]] == list(PREPROCESSINGS)
    assert result["images"] == 3 and result["tokens"] == 3 * 2 * 2 and result["backend"] == "torch float32"
    assert 0.0 <= result["tokens_changed"] <= 1.0 and result["mean_pixel_difference"] > 0.0


def test_equal_probabilities_give_equal_calibrations_on_both_backends():
    probs = blob_probs(8).numpy()
    rows = compare_calibration_backends({"torch": probs, "onnxruntime": probs.copy()}, levels=(0.35,), cca_steps=(0, 3))
    assert [(row["cca_steps"], row["calibrated_on"]) for row in rows] == [
        (0, "torch float32"), (0, "onnxruntime int8 MatMuls"), (3, "torch float32"), (3, "onnxruntime int8 MatMuls")]
    for row in rows:
        assert list(row["sparsity_on"].values()) == pytest.approx([row["achieved"]] * 2)
    assert rows[0]["threshold"] == rows[1]["threshold"] and rows[2]["threshold"] == rows[3]["threshold"]
