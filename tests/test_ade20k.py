"""ADE20K semantic masks as object pixels (bavit.data.ade20k), on hand-made masks and on the shared folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bavit.data.ade20k import COCO_LIKE, ade20k_records, label_statistics, main, object_values
from bavit.errors import DataError
from conftest import SHARED_DATA

PERSON, WINDOW, WALL, OTHER = 13, 9, 1, 0


def make_ade(root, masks: dict[str, np.ndarray]):
    """An ADE20K-style folder: categories (every COCO-like value and window are things, wall is stuff), a grey
    JPEG and a mask PNG per entry."""
    categories = [{"value": v, "name": f"class {v}", "isthing": int(v in COCO_LIKE or v == WINDOW)} for v in range(1, 151)]
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "categories.json").write_text(json.dumps({"categories": categories}))
    for name, mask in masks.items():
        Image.new("RGB", mask.shape[::-1], (128, 128, 128)).save(root / "images" / f"{name}.jpg")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{name}.png")
    return root


def quadrants() -> np.ndarray:
    """32x32: person top-left, window top-right, unlabelled bottom-left, wall bottom-right (a 2x2 grid of 16 px)."""
    mask = np.full((32, 32), WALL, np.uint8)
    mask[:16, :16], mask[:16, 16:], mask[16:, :16] = PERSON, WINDOW, OTHER
    return mask


@pytest.mark.parametrize("classes, other, expected", [
    ("coco", "background", [[1, 0], [0, 0]]),
    ("things", "background", [[1, 1], [0, 0]]),  # windows are ADE things, not COCO objects
    ("coco", "ignore", [[1, 0], [-100, 0]]),
])
def test_classes_and_other_choose_the_labels(tmp_path, classes, other, expected):
    record, = ade20k_records(make_ade(tmp_path, {"ADE_a": quadrants()}), classes=classes, other=other)
    assert record.labels((2, 2)).tolist() == expected
    assert record.image_id == "ADE_a" and (record.width, record.height) == (32, 32)
    assert record.instances[0].iscrowd  # semantic: no instances to count


def test_the_ten_percent_rule_counts_object_pixels(tmp_path):
    exactly = np.full((16, 16), WALL, np.uint8)
    exactly.flat[:25] = PERSON  # 25 of 256 pixels = 9.8%: background
    more = exactly.copy()
    more.flat[:26] = PERSON  # 26 / 256 = 10.2%: foreground
    mixed = np.full((16, 16), WALL, np.uint8)
    mixed.flat[:13], mixed.flat[13:26] = PERSON, 99  # person and bottle together pass
    root = make_ade(tmp_path, {"a": exactly, "b": more, "c": mixed})
    assert [r.labels((1, 1)).item() for r in ade20k_records(root)] == [0, 1, 1]


def test_bad_folders_and_choices_are_clear_errors(tmp_path):
    root = make_ade(tmp_path / "ade", {"a": quadrants()})
    with pytest.raises(DataError, match="ADE20K classes are one of"):
        ade20k_records(root, classes="all")
    with pytest.raises(DataError, match="'other' pixels are one of"):
        ade20k_records(root, other="fg")
    (root / "masks" / "a.png").unlink()
    with pytest.raises(DataError, match="a.jpg has no mask"):
        ade20k_records(root)
    with pytest.raises(DataError, match="no categories.json"):
        ade20k_records(tmp_path)


def test_the_shared_folder_and_the_coco_like_table():
    root = SHARED_DATA / "ade20k"
    if not (root / "categories.json").is_file():
        pytest.skip(f"shared ADE20K folder not found at {root}")
    categories = json.loads((root / "categories.json").read_text())
    names = {c["value"]: c["name"] for c in categories["categories"]}
    for value, description in COCO_LIKE.items():  # each entry names its ADE class as the file does
        assert names[value].split(",")[0] == description.split(" -> ")[0], value
    assert len(object_values(categories, "things")) == 100 and len(object_values(categories, "coco")) == len(COCO_LIKE)
    records = ade20k_records(root)
    assert len(records) == 2000
    fractions = [float(r.fg_mask().mean()) for r in records[:50]]
    assert 0.0 < np.mean(fractions) < 0.5  # COCO-like objects are a part of a scene


def test_train_takes_ade20k_alone_or_mixed(tmp_path, synthetic_coco, capsys):
    from bavit.cli import main
    from bavit.core.checkpoint import read_checkpoint

    root = make_ade(tmp_path / "ade", {f"ADE_{i}": quadrants() for i in range(3)})
    common = ["train", "--img-size", "64", "--depth", "1", "--epochs", "1", "--batch-size", "2", "--no-progress",
              "--ade-root", str(root)]
    assert main([*common, "--out", str(tmp_path / "alone")]) == 0
    alone = read_checkpoint(tmp_path / "alone" / "last.safetensors").extra
    assert alone["train_image_ids"] == ["ADE_0", "ADE_1", "ADE_2"]
    assert alone["train"]["data"] == "ade20k: 3 scenes, --ade-classes coco, --ade-other background"
    assert main([*common, "--ade-limit", "2", "--coco-root", str(synthetic_coco), "--limit", "3",
                 "--out", str(tmp_path / "mixed")]) == 0
    mixed = read_checkpoint(tmp_path / "mixed" / "last.safetensors").extra
    assert len(mixed["train_image_ids"]) == 5 and mixed["train_image_ids"][3:] == ["ADE_0", "ADE_1"]
    assert mixed["train"]["data"] == ("coco train2017 all: 3 images (--limit 3); "
                                      "ade20k: 2 scenes, --ade-classes coco, --ade-other background")


@pytest.mark.parametrize("classes, other, expected", [
    # quadrants: 1 FG of 4 tokens (person); the wall image: none. 8 tokens, 1 image of 2 without FG.
    ("coco", "background", {"fg_tokens": 1 / 8, "ignored_tokens": 0.0, "images_without_fg": 0.5, "images": 2}),
    ("things", "background", {"fg_tokens": 2 / 8, "ignored_tokens": 0.0, "images_without_fg": 0.5, "images": 2}),
    ("coco", "ignore", {"fg_tokens": 1 / 8, "ignored_tokens": 1 / 8, "images_without_fg": 0.5, "images": 2}),
])
def test_label_statistics_by_hand(tmp_path, classes, other, expected):
    root = make_ade(tmp_path, {"ADE_a": quadrants(), "ADE_b": np.full((32, 32), WALL, np.uint8)})
    assert label_statistics(ade20k_records(root, classes, other), grid=(2, 2)) == expected


def test_label_statistics_command_prints_every_choice(tmp_path, capsys):
    root = make_ade(tmp_path, {"ADE_a": quadrants()})
    assert main(["--ade-root", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 4 and lines[2].startswith("| ADE20K, classes=coco, other=background | 1 |")
    with pytest.raises(DataError, match="no images"):
        label_statistics([])
