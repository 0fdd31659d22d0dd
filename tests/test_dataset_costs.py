"""What pruning costs each image of a dataset (bavit.engine.dataset_costs and ``python -m bavit costs``): object
pixels per detector patch, the scan, the rows at a setting, their order and files. A hand-made COCO set with RLE
masks whose pixels per patch are counted by hand, and hand-made probability grids with exact answers."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from bavit.cli import main
from bavit.core.checkpoint import save_checkpoint
from bavit.core.config import BAViTConfig
from bavit.core.model import build_bavit
from bavit.data.records import coco_records
from bavit.engine.dataset_costs import (
    CostRow,
    ScannedImage,
    cost_rows,
    cost_totals,
    costs_csv,
    format_costs,
    object_pixels_per_patch,
    scan_images,
    sort_rows,
    write_costs,
)
from bavit.errors import ConfigError, DataError
from bavit.predictor import Predictor
from bavit.pruning.calibration import Calibration
from bavit.pruning.settings import PruningSettings

TINY = BAViTConfig(img_size=64, depth=1)  # a 4x4 BAViT grid


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd form: run lengths of the column-major mask, starting with a run of 0s."""
    flat, counts, value, run = mask.astype(np.uint8).flatten(order="F"), [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _rect(height: int, width: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


# (id, width, height, [(mask, iscrowd)]): rows/cols are half-open pixel ranges of the stored image
IMAGES = [
    (1, 64, 64, [(_rect(64, 64, (0, 16), (0, 32)), 0),  # patches (0,0) and (0,1), whole
                 (_rect(64, 64, (40, 48), (40, 64)), 1),  # a crowd: 8x8 in (2,2), 8x16 in (2,3)
                 (_rect(64, 64, (8, 24), (24, 40)), 0)]),  # overlaps the first: 64 new pixels in (0,2), (1,1), (1,2)
    (2, 32, 32, [(_rect(32, 32, (0, 8), (0, 8)), 0)]),  # doubled by the resize to 64: patch (0,0), whole
    (3, 128, 32, [(_rect(32, 128, (0, 16), (64, 128)), 0)]),  # halved across, doubled down: (0..1, 2..3), whole
    (4, 64, 64, []),  # no objects
]
# object pixels per patch at a 64 px detector input (4x4 patches of 16x16), counted by hand from IMAGES
OBJECTS_AT_64 = {
    1: [[256, 256, 64, 0], [0, 64, 64, 0], [0, 0, 64, 128], [0, 0, 0, 0]],
    2: [[256, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    3: [[0, 0, 256, 256], [0, 0, 256, 256], [0, 0, 0, 0], [0, 0, 0, 0]],
    4: [[0] * 4] * 4,
}


def write_coco(root, images=IMAGES, without_mask: bool = False):
    """``root/annotations/instances_val2017.json`` and ``root/val2017/*.jpg`` for ``images`` (RLE masks; a crowd
    as uncompressed RLE); ``without_mask`` drops the first annotation's segmentation."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    listed, annotations = [], []
    rng = np.random.default_rng(0)
    for image_id, width, height, objects in images:
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "val2017" / file_name)
        listed.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for mask, crowd in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": crowd,
                                "area": float(mask.sum()), "bbox": _box(mask),
                                "segmentation": _uncompressed_rle(mask) if crowd else _rle(mask)})
    if without_mask:
        annotations[0]["segmentation"] = []
    dataset = {"images": listed, "annotations": annotations,
               "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(dataset))
    return root


@pytest.fixture(scope="module")
def tiny_bavit():
    torch.manual_seed(0)
    return build_bavit(TINY)


@pytest.fixture(scope="module")
def predictor(tiny_bavit):
    """BAViT on a 4x4 grid and a 64 px detector input (4x4 patches): every grid is the keep mask's own, no resize."""
    calibration = Calibration(levels=(0.0, 0.5), thresholds={0: (0.0, 0.6)}, achieved={0: (0.0, 0.5)}, grid=4,
                              resample="nearest", images=1, source="by hand")
    return Predictor(bavit=tiny_bavit, detector=None, backend="torch", image_size=64, calibration=calibration)


@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path / "coco")


def records_of(root):
    return coco_records(root / "annotations" / "instances_val2017.json", root / "val2017")


def test_object_pixels_per_patch_counts_the_resized_mask():
    mask = np.zeros((64, 64), dtype=bool)
    mask[0:2, 0:2] = True  # 16x16 at 512 px: patch (0, 0), whole
    mask[63, 63] = True  # 8x8 at 512 px, in the last patch
    counts = object_pixels_per_patch(mask, 512, 32)
    assert counts.dtype == np.int64 and counts.shape == (32, 32)
    assert counts[0, 0] == 256 and counts[31, 31] == 64 and counts.sum() == 256 + 64
    wide = _rect(32, 128, (0, 16), (64, 128))  # aspect not kept: 128x32 -> 64x64
    assert object_pixels_per_patch(wide, 64, 4).tolist() == OBJECTS_AT_64[3]
    halved = np.zeros((64, 64), dtype=bool)
    halved[1, 1] = halved[2, 2] = True  # at half size, nearest neighbour reads pixel (2i + 1, 2j + 1): (1, 1) only
    assert object_pixels_per_patch(halved, 32, 2).tolist() == [[1, 0], [0, 0]]
    with pytest.raises(ValueError, match="multiple"):
        object_pixels_per_patch(mask, 500, 32)


def test_scan_yields_batches_with_the_apps_probabilities_and_the_objects_by_hand(predictor, coco, monkeypatch):
    records = records_of(coco)
    runs = []
    set_images = predictor.set_images
    monkeypatch.setattr(predictor, "set_images",
                        lambda images, **kw: runs.append(len(images)) or set_images(images, **kw))
    scan = scan_images(predictor, records, split="val2017", batch_size=3)
    first = next(scan)
    assert runs == [3] and len(first) == 3  # the first rows come before the rest is computed
    scanned = first + [image for batch in scan for image in batch]
    assert runs == [3, 1]
    assert [image.image_id for image in scanned] == [1, 2, 3, 4]
    assert [image.file_name for image in scanned] == [f"{i:012d}.jpg" for i in (1, 2, 3, 4)]
    assert {image.split for image in scanned} == {"val2017"}
    for image, record in zip(scanned, records):
        assert image.object_pixels.tolist() == OBJECTS_AT_64[image.image_id]
        assert image.path == record.image_path
        # what the app computes for this image: Predictor.set_image on it, decoded as the annotations lay it out
        expected = predictor.set_image(record.load_image()).fg_prob
        assert image.fg_prob.dtype == np.float32 and image.fg_prob.shape == (4, 4)
        np.testing.assert_allclose(image.fg_prob, expected, atol=1e-6)
        assert not image.fg_prob.flags.writeable and not image.object_pixels.flags.writeable


def test_scan_refuses_annotations_without_masks_and_a_bad_batch_size(predictor, tmp_path):
    records = records_of(write_coco(tmp_path / "boxes", without_mask=True))
    with pytest.raises(DataError, match="000000000001.jpg: an annotation has no segmentation"):
        next(scan_images(predictor, records))
    with pytest.raises(ConfigError, match="--batch-size must be >= 1"):
        next(scan_images(predictor, records, batch_size=0))


def scanned_by_hand() -> list[ScannedImage]:
    """The four images' object pixels with probability grids that keep (at threshold 0.5, no CCA): image 1 its
    first two patches, image 2 nothing, image 3 its four object patches, image 4 everything; and a copy of image
    3 named to sort before it."""
    def probs(*kept):
        grid = np.full((4, 4), 0.2, dtype=np.float32)
        for cell in kept:
            grid[cell] = 0.9
        return grid

    everything = [(r, c) for r in range(4) for c in range(4)]
    grids = {1: probs((0, 0), (0, 1)), 2: probs(), 3: probs((0, 2), (0, 3), (1, 2), (1, 3)), 4: probs(*everything)}
    scanned = [ScannedImage(f"{i:012d}.jpg", f"/data/{i:012d}.jpg", i, "val2017", grids[i],
                            np.array(OBJECTS_AT_64[i], dtype=np.int64)) for i in (1, 2, 3, 4)]
    return scanned + [ScannedImage("000000000000.jpg", "/data/000000000000.jpg", 0, "val2017", grids[3],
                                   np.array(OBJECTS_AT_64[3], dtype=np.int64))]


def test_cost_rows_by_hand(predictor):
    rows = cost_rows(scanned_by_hand(), PruningSettings(threshold=0.5, cca_steps=0), predictor)
    assert [row.image_id for row in rows] == [2, 1, 0, 3, 4]  # lost 100%, 3/7; then 0 lost: sparser, then by name
    by_id = {row.image_id: row for row in rows}
    assert (by_id[1].kept_patches, by_id[1].object_pixels, by_id[1].object_pixels_lost) == (2, 896, 384)
    assert by_id[1].lost_fraction == pytest.approx(384 / 896) and by_id[1].sparsity == 14 / 16
    assert (by_id[2].kept_patches, by_id[2].object_pixels_lost, by_id[2].lost_fraction, by_id[2].sparsity) == \
        (0, 256, 1.0, 1.0)
    assert (by_id[3].kept_patches, by_id[3].object_pixels, by_id[3].object_pixels_lost, by_id[3].sparsity) == \
        (4, 1024, 0, 0.75)
    assert (by_id[4].kept_patches, by_id[4].object_pixels, by_id[4].lost_fraction, by_id[4].sparsity) == \
        (16, 0, 0.0, 0.0)  # no objects: nothing to lose
    assert {row.threshold for row in rows} == {0.5}
    assert by_id[2].path == "/data/000000000002.jpg" and by_id[2].split == "val2017"
    by_sparsity = cost_rows(scanned_by_hand(), PruningSettings(threshold=0.5, cca_steps=0), predictor, sort="sparsity")
    assert [row.image_id for row in by_sparsity] == [2, 1, 0, 3, 4]
    assert [row.image_id for row in sort_rows(rows[::-1], by="sparsity")] == [2, 1, 0, 3, 4]
    assert cost_totals(rows) == {"images": 5, "mean_sparsity": pytest.approx((1 + 14 / 16 + 0.75 + 0.75 + 0) / 5),
                                 "object_pixels": 896 + 256 + 2048, "object_pixels_lost": 384 + 256,
                                 "lost_fraction": pytest.approx(640 / 3200), "images_with_objects": 4,
                                 "images_losing_pixels": 2}


def test_sort_ties_go_to_more_pixels_lost_then_sparsity_then_name():
    def row(name, lost_fraction, lost, sparsity):
        return CostRow(name, None, "", 0, sparsity, 100, lost, lost_fraction, None, name)

    rows = [row("d", 0.5, 10, 0.9), row("c", 0.5, 20, 0.1), row("b", 0.5, 10, 0.9), row("a", 0.5, 10, 0.2),
            row("e", 0.6, 1, 0.0)]
    assert [r.file_name for r in sort_rows(rows)] == ["e", "c", "b", "d", "a"]
    assert [r.file_name for r in sort_rows(rows, by="sparsity")] == ["b", "d", "a", "c", "e"]
    with pytest.raises(ConfigError, match="unknown sort 'size'"):
        sort_rows(rows, by="size")


def test_cost_rows_take_the_predictors_rule_for_every_selection(predictor):
    scanned = scanned_by_hand()
    at_threshold = cost_rows(scanned, PruningSettings(threshold=0.3, cca_steps=0), predictor)
    calibrated = cost_rows(scanned, PruningSettings(sparsity=0.25, cca_steps=0), predictor)  # 0.25 -> threshold 0.3
    assert [row.threshold for row in calibrated] == [pytest.approx(0.3)] * len(scanned)
    assert [(r.image_id, r.kept_patches, r.object_pixels_lost) for r in calibrated] == \
        [(r.image_id, r.kept_patches, r.object_pixels_lost) for r in at_threshold]
    top_k = cost_rows(scanned, PruningSettings(image_sparsity=0.5, cca_steps=0), predictor)
    assert {row.kept_patches for row in top_k} == {8} and {row.threshold for row in top_k} == {None}
    by_id = {row.image_id: row for row in top_k}
    assert by_id[3].object_pixels_lost == 0  # its four object patches are among its 8 most probable
    # an object in patch (1, 1), whose three kept neighbours make CCA keep it too
    probs = np.full((4, 4), 0.2, dtype=np.float32)
    probs[0, 0] = probs[0, 1] = probs[1, 0] = 0.9
    objects = np.zeros((4, 4), dtype=np.int64)
    objects[1, 1] = 100
    grown = [ScannedImage("grown.jpg", "grown.jpg", 5, "", probs, objects)]
    assert [(r.kept_patches, r.object_pixels_lost) for steps in (0, 1)
            for r in cost_rows(grown, PruningSettings(threshold=0.5, cca_steps=steps), predictor)] == [(3, 100), (4, 0)]
    with pytest.raises(ConfigError, match="calibrated range"):
        cost_rows(scanned, PruningSettings(sparsity=0.8, cca_steps=0), predictor)
    assert cost_rows([], PruningSettings(), predictor) == []


def test_cost_rows_refuse_another_grid(predictor):
    image = scanned_by_hand()[0]
    other = ScannedImage(image.file_name, image.path, 1, "", image.fg_prob, np.zeros((32, 32), dtype=np.int64))
    with pytest.raises(ConfigError, match="32x32 detector grid, the Predictor's is 4x4"):
        cost_rows([other], PruningSettings(), predictor)


def test_csv_json_and_table_hold_every_row(predictor, tmp_path):
    settings = PruningSettings(threshold=0.5, cca_steps=0)
    rows = cost_rows(scanned_by_hand(), settings, predictor)
    write_costs(rows, settings, tmp_path / "c.csv", tmp_path / "c.json", split="val2017")
    with open(tmp_path / "c.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["file_name", "image_id", "split", "kept_patches", "sparsity", "object_pixels",
                              "object_pixels_lost", "lost_fraction", "threshold", "path"]
    assert [line["file_name"] for line in table] == [row.file_name for row in rows]
    assert table[1]["object_pixels_lost"] == "384" and float(table[1]["lost_fraction"]) == pytest.approx(384 / 896)
    assert table[0]["threshold"] == "0.5"
    assert (tmp_path / "c.csv").read_text() == costs_csv(rows)
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["split"] == "val2017" and report["setting"] == {"threshold": 0.5, "cca_steps": 0}
    assert report["threshold"] == 0.5 and report["totals"]["object_pixels_lost"] == 640
    assert [row["image_id"] for row in report["rows"]] == [2, 1, 0, 3, 4]
    printed = format_costs(rows, top=2)
    assert "| 1 | 000000000002.jpg | 256 | 256 | 100.0% | 100.0% | 0 |" in printed
    assert "| 2 | 000000000001.jpg | 896 | 384 | 42.9% | 87.5% | 2 |" in printed and "| 3 |" not in printed
    assert "5 images: mean sparsity 67.5%, 20.0% of the object pixels lost (640 of 3200" in printed


@pytest.fixture
def checkpoint(tiny_bavit, tmp_path):
    return save_checkpoint(tiny_bavit, tmp_path / "tiny.safetensors")


def test_cli_writes_the_table_as_csv_and_json(coco, checkpoint, tmp_path, capsys):
    """At 512 px (32x32 patches) every image's object pixels scale exactly (x64, x256, x512 pixels); threshold 1
    prunes every patch of this BAViT (its probabilities stay below 1), so each image loses all of them."""
    common = ["costs", "--ann", str(coco / "annotations" / "instances_val2017.json"), "--images", str(coco / "val2017"),
              "--bavit", str(checkpoint), "--backend", "torch", "--cca-steps", "0", "--no-progress"]
    outputs = ["--csv", str(tmp_path / "c.csv"), "--json", str(tmp_path / "c.json")]
    assert main([*common, "--threshold", "1", *outputs]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## threshold 1, 0 CCA steps: 4 images, by lost (most first)")
    with open(tmp_path / "c.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(line["image_id"], line["object_pixels"], line["object_pixels_lost"], line["kept_patches"])
            for line in table] == [("3", "65536", "65536", "0"), ("1", "57344", "57344", "0"),
                                   ("2", "16384", "16384", "0"), ("4", "0", "0", "0")]
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["grid"] == 32 and report["image_size"] == 512 and report["backend"] == "torch float32"
    assert report["totals"]["lost_fraction"] == 1.0 and report["totals"]["mean_sparsity"] == 1.0
    assert "wrote " + str(tmp_path / "c.csv") in out
    assert main([*common, "--threshold", "0", "--limit", "2", "--json", str(tmp_path / "all.json")]) == 0
    report = json.loads((tmp_path / "all.json").read_text())
    assert [row["image_id"] for row in report["rows"]] == [1, 2]  # nothing lost: by name
    assert report["totals"]["object_pixels_lost"] == 0 and report["totals"]["mean_sparsity"] == 0.0


def test_cli_errors_are_one_line(coco, checkpoint, tmp_path, capsys):
    def error(*argv):
        assert main(["costs", "--bavit", str(checkpoint), "--backend", "torch", "--no-progress", *argv]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.splitlines()) == 1
        return captured.err

    assert "annotation file not found" in error("--coco-root", str(tmp_path / "missing"))
    assert "is a folder" in error("--coco-root", str(coco), "--csv", str(tmp_path))
    assert "calibrated BAViT checkpoint" in error("--coco-root", str(coco), "--sparsity", "0.35")  # before the scan
    assert "--limit must be >= 1" in error("--coco-root", str(coco), "--limit", "0")
