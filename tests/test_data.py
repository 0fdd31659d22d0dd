import pytest
import torch

from bavit.core.config import SMALL
from bavit.core.model import bavit_pixels
from bavit.data.records import coco_records, coco_split, voc_records
from bavit.errors import DataError


def test_coco_val_subset(coco_root):
    records = coco_records(*coco_split(coco_root, "val2017"))
    assert len(records) == 206
    assert sum(len(r.instances) for r in records) == 1786
    assert sum(i.iscrowd for r in records for i in r.instances) == 21
    pixels, labels = bavit_pixels(records[0].load_image(), SMALL), records[0].labels((24, 24))
    assert pixels.shape == (3, 384, 384) and pixels.dtype == torch.float32
    assert labels.shape == (24, 24) and set(labels.unique().tolist()) <= {0, 1}


def test_training_data_and_the_predictor_share_one_bavit_preprocessing(coco_root):
    """What BAViT is trained on without augmentation (augment.plain_sample) is bit for bit what the app's Predictor
    feeds it, and the hand-written form of the rule (square resize to 384, then (x/255 - mean) / std) is what both
    compute."""
    import numpy as np
    from PIL import Image

    from bavit.core.model import build_bavit
    from bavit.data.augment import CachedSamples, plain_sample
    from bavit.predictor import Predictor

    record = coco_records(*coco_split(coco_root, "val2017"))[0]
    image = record.load_image()
    predictor = Predictor(bavit=build_bavit(SMALL), detector=None, backend="torch")
    pixels = plain_sample(CachedSamples([record], SMALL), 0)[0]
    assert torch.equal(pixels, predictor.bavit_pixels([image])[0])
    array = np.asarray(image.resize((384, 384), Image.BILINEAR), dtype=np.float32) / 255.0
    by_hand = (array - np.array(SMALL.mean, np.float32)) / np.array(SMALL.std, np.float32)
    np.testing.assert_allclose(pixels.permute(1, 2, 0).numpy(), by_hand, rtol=0, atol=1e-6)


def test_coco_val_fg_fraction_matches_the_data_readme(coco_root):
    # shared/data/README.md: FG is 37.4% of tokens on val2017 with the >10% mask rule at 384 / 16.
    records = coco_records(*coco_split(coco_root, "val2017"))
    labels = torch.stack([r.labels((24, 24)) for r in records])
    assert round(float((labels == 1).float().mean()), 3) == 0.374


def test_voc_loader(voc_root):
    records = voc_records(voc_root, "val")
    assert [r.image_id for r in records] == ["2011_000003", "2011_000006", "2011_000025"]
    for record, has_void in zip(records, (True, True, False)):
        labels = record.labels((24, 24))
        assert labels.shape == (24, 24)
        assert (labels == 1).any() and (labels == 0).any()
        image = record.load_image()
        assert image.size == (record.width, record.height)
        # The void border pixels (255 in SegmentationClass) are kept apart from FG and BG.
        assert record.void_mask().any() == has_void
        assert not (record.void_mask() & record.fg_mask()).any()
    assert [len(r.instances) for r in records] == [3, 6, 3]


def test_voc_missing_image_set(voc_root):
    with pytest.raises(DataError, match="image set not found"):
        voc_records(voc_root, "nonexistent")


def test_coco_missing_paths_are_clear(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        coco_records(tmp_path / "none.json", tmp_path)
