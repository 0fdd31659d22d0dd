"""Training cache and augmentation (bavit.data.augment): the labels move with the image and follow the one label
rule (bavit.core.labels) on the crop path as on the exact, un-augmented labels; every view ends with BAViT's one
preprocessing (bavit.imageio.to_tensor), so the un-augmented view is the Predictor's input. Tiny hand-made images."""
import numpy as np
import torch
from PIL import Image

from bavit.core.config import BAViTConfig
from bavit.core.labels import BOX_TAU, IGNORE_INDEX, labels_from_mask
from bavit.core.model import bavit_pixels, build_bavit
from bavit.data.augment import AugmentConfig, CachedSamples, augmented_sample, plain_sample
from bavit.data.records import Instance, Record
from bavit.imageio import to_tensor

WHOLE_IMAGE = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), no_crop_prob=0.0, hflip_prob=0.0, color=0.0)


def _full_view_label(mask: np.ndarray, void: np.ndarray | None, tmp_path) -> torch.Tensor:
    """augment.py's crop path on a crop that is the whole image, with the cache at the model input (20x20, 10x10
    patches): the labels it recomputes from the coverage map, not the cached exact ones."""
    config = BAViTConfig(img_size=20, patch_size=10, depth=1)
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    record = Record(tmp_path / "a.png", 20, 20, [Instance((0.0, 0.0, 20.0, 20.0), float(mask.sum()), False, lambda: mask)],
                    void_mask=None if void is None else (lambda: void))
    cache = CachedSamples([record], config, cache_size=20)
    _, labels, _ = augmented_sample(cache, 0, WHOLE_IMAGE, np.random.default_rng(0))
    return labels


def test_labels_augment_and_records_apply_one_rule(tmp_path):
    # 20x20 image, 2x2 grid of 10x10 = 100-pixel patches.
    mask = np.zeros((20, 20), dtype=bool)
    mask[0, 0:10] = True  # patch (0, 0): 10 pixels, exactly 10% -> BG
    mask[10, 0:10] = True
    mask[11, 0] = True  # patch (1, 0): 11 pixels -> FG
    mask[10:15, 10:20] = True  # patch (1, 1): 50 pixels -> FG; patch (0, 1): nothing -> BG
    expected = [[0, 0], [1, 1]]
    assert labels_from_mask(mask, (2, 2)).tolist() == expected
    assert _full_view_label(mask, None, tmp_path).tolist() == expected
    instance = Instance((0.0, 0.0, 20.0, 20.0), float(mask.sum()), False, lambda: mask)
    record = Record(tmp_path / "unused.png", 20, 20, [instance])
    ((_, patches),) = record.instance_patches((2, 2))
    assert patches.astype(int).tolist() == expected
    assert record.labels((2, 2)).tolist() == expected


def test_labels_and_augment_agree_with_void(tmp_path):
    # Void pixels count as neither; a patch more than half void is ignored.
    mask = np.zeros((20, 20), dtype=bool)
    void = np.zeros((20, 20), dtype=bool)
    void[0:5, 0:10] = True
    mask[5, 0:5] = True  # patch (0, 0): 5 object pixels of 50 non-void, exactly 10% -> BG
    void[0:5, 10:20] = True
    mask[5, 10:16] = True  # patch (0, 1): 6 of 50 -> 12% -> FG
    void[10:16, 0:10] = True
    mask[16, 0:9] = True  # patch (1, 0): 60% void -> ignored (though 9 of 40 would be FG)
    mask[10:12, 10:20] = True  # patch (1, 1): 20 of 100 -> FG
    expected = [[0, 1], [IGNORE_INDEX, 1]]
    assert labels_from_mask(mask, (2, 2), void_mask=void).tolist() == expected
    assert _full_view_label(mask, void, tmp_path).tolist() == expected


def test_box_labels_follow_box_tau_on_the_cache_and_on_the_crop(tmp_path):
    # A 20x7 box over a 20x20 image: the two top patches (10x10) are 70% inside it, the bottom ones not at all.
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    record = Record(tmp_path / "a.png", 20, 20, [Instance((0.0, 0.0, 20.0, 7.0), 140.0, False)])
    config = BAViTConfig(img_size=20, patch_size=10, depth=1)
    for tau, expected in ((BOX_TAU, [[1, 1], [0, 0]]), (0.75, [[0, 0], [0, 0]])):
        cache = CachedSamples([record], config, cache_size=20, label_source="boxes", box_tau=tau)
        assert cache.labels[0].tolist() == expected  # exact labels (record.labels)
        _, labels, fractions = augmented_sample(cache, 0, WHOLE_IMAGE, np.random.default_rng(0))
        assert labels.tolist() == expected  # recomputed from the cached coverage map of the crop
        assert torch.allclose(fractions, torch.tensor([[0.7, 0.7], [0.0, 0.0]]))
    assert CachedSamples([record], config, cache_size=20, label_source="boxes").box_tau == BOX_TAU == 0.5


def test_a_flip_moves_pixels_labels_and_fractions_together(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    mask = np.zeros((20, 20), dtype=bool)
    mask[0:10, 0:3] = True  # top-left patch only: 30%
    record = Record(tmp_path / "a.png", 20, 20, [Instance((0.0, 0.0, 3.0, 10.0), 30.0, False, lambda: mask)])
    cache = CachedSamples([record], BAViTConfig(img_size=20, patch_size=10, depth=1), cache_size=20)
    plain = plain_sample(cache, 0)
    assert plain[1].tolist() == [[1, 0], [0, 0]] and torch.allclose(plain[2], torch.tensor([[0.3, 0.0], [0.0, 0.0]]))
    whole_view = AugmentConfig(no_crop_prob=1.0, hflip_prob=0.0, color=0.0)
    flipped_view = AugmentConfig(no_crop_prob=1.0, hflip_prob=1.0, color=0.0)
    kept = augmented_sample(cache, 0, whole_view, np.random.default_rng(0))
    flipped = augmented_sample(cache, 0, flipped_view, np.random.default_rng(0))
    assert all(torch.equal(a, b) for a, b in zip(kept, plain))
    assert all(torch.equal(a, b.flip(-1)) for a, b in zip(flipped, plain))
    assert flipped[1].tolist() == [[0, 1], [0, 0]]


def test_the_one_preprocessing_on_a_hand_made_image():
    # 16x16, left half black, right half (200, 104, 48), to 8x8: PIL's bilinear filter at scale 2 spans 4 input
    # columns with weights 1/8, 3/8, 3/8, 1/8, so output column 3 is 1/8 colour, column 4 is 7/8, the others pure.
    array = np.zeros((16, 16, 3), dtype=np.uint8)
    array[:, 8:] = (200, 104, 48)
    config = BAViTConfig(img_size=8, patch_size=4, depth=1)
    expected_row = np.array([[0, 0, 0, 25, 175, 200, 200, 200], [0, 0, 0, 13, 91, 104, 104, 104],
                             [0, 0, 0, 6, 42, 48, 48, 48]], dtype=np.float32)  # [3, 8]
    mean = np.array(config.mean, np.float32)[:, None, None]
    std = np.array(config.std, np.float32)[:, None, None]
    expected = (np.broadcast_to(expected_row[:, None, :], (3, 8, 8)) / np.float32(255.0) - mean) / std
    image = Image.fromarray(array)
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    for pixels in (to_tensor(image, 8, config.mean, config.std), bavit_pixels(image, config), bavit_pixels(tensor, config)):
        assert pixels.shape == (3, 8, 8) and pixels.dtype == torch.float32
        np.testing.assert_array_equal(pixels.numpy(), expected)


def test_the_un_augmented_view_is_the_predictors_input(tmp_path):
    # A non-square image cached at another size than the input: the plain view is still bit for bit the Predictor's.
    from bavit.predictor import Predictor

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (23, 37, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    record = Record(tmp_path / "a.png", 37, 23, [])
    config = BAViTConfig(img_size=20, patch_size=10, depth=1)
    cache = CachedSamples([record], config, cache_size=32)
    predictor = Predictor(bavit=build_bavit(config), detector=None, backend="torch")
    assert torch.equal(plain_sample(cache, 0)[0], predictor.bavit_pixels([record.load_image()])[0])
    whole_view = AugmentConfig(no_crop_prob=1.0, hflip_prob=0.0, color=0.0)
    assert torch.equal(augmented_sample(cache, 0, whole_view, np.random.default_rng(0))[0], plain_sample(cache, 0)[0])


def test_augmented_views_are_8_bit_images_through_the_one_preprocessing(tmp_path):
    # Crop, flip and colour jitter act on uint8 pixels; the normalisation comes last, so un-normalised the input is
    # an 8-bit image (what the Predictor receives) and its values lie on the 1/255 grid.
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    config = BAViTConfig(img_size=20, patch_size=10, depth=1)
    cache = CachedSamples([Record(tmp_path / "a.png", 40, 30, [])], config, cache_size=32)
    crop = AugmentConfig(no_crop_prob=0.0, hflip_prob=1.0, color=0.3)
    pixels = augmented_sample(cache, 0, crop, np.random.default_rng(3))[0]
    values = (pixels * torch.tensor(config.std)[:, None, None] + torch.tensor(config.mean)[:, None, None]) * 255.0
    assert pixels.shape == (3, 20, 20)
    assert torch.allclose(values, values.round(), atol=1e-3) and values.min() >= -1e-3 and values.max() <= 255.001
