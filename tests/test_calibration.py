"""Cross-fitted calibration: K-fold splits (bavit.data.records.fold_split) and calibrate --fold-models, where each
image is scored by a model that never trained on it."""
from __future__ import annotations

import numpy as np
import pytest

from bavit.cli import main
from bavit.core.model import checkpoint_extra, load_checkpoint
from bavit.data.records import Record, coco_records, coco_split, fold_split, holdout_split
from bavit.engine.evaluate import predict_probs
from bavit.errors import DataError
from bavit.pruning.calibration import LEVELS, calibrate, load_calibration


def fake(ids) -> list[Record]:
    return [Record(image_path=None, width=1, height=1, image_id=i) for i in ids]


def test_folds_partition_the_set_by_id_alone():
    records = fake(range(23))
    helds = [fold_split(records, 4, fold, seed=3)[1] for fold in range(4)]
    ids = [sorted(r.image_id for r in held) for held in helds]
    assert sorted(i for fold in ids for i in fold) == list(range(23))  # a partition
    assert sorted(len(fold) for fold in ids) == [5, 6, 6, 6]
    train, held = fold_split(records, 4, 1, seed=3)
    assert {r.image_id for r in train} == set(range(23)) - set(ids[1]) and [r.image_id for r in held] == sorted(ids[1])
    shuffled = fake(reversed(range(23)))
    assert sorted(r.image_id for r in fold_split(shuffled, 4, 1, seed=3)[1]) == ids[1]
    assert ids[1] != sorted(r.image_id for r in fold_split(records, 4, 1, seed=4)[1])
    # folds take turns down the hold-out order: the first K images of it are in K different folds
    first = [r.image_id for r in holdout_split(records, 4 / 23, seed=3)[1]]
    assert sorted(next(k for k, fold in enumerate(ids) if i in fold) for i in first) == [0, 1, 2, 3]
    for folds, fold in ((1, 0), (4, 4), (4, -1)):
        with pytest.raises(DataError, match="--fold must be in"):
            fold_split(records, folds, fold)


def test_calibrate_with_fold_models_uses_out_of_fold_probabilities(tmp_path, synthetic_coco):
    common = ["--coco-root", str(synthetic_coco), "--split", "train2017"]
    train = ["train", *common, "--img-size", "64", "--depth", "1", "--epochs", "1", "--batch-size", "2",
             "--no-progress", "--folds", "2"]
    for fold in (0, 1):
        assert main([*train, "--fold", str(fold), "--subset", "fit", "--seed", str(fold),
                     "--out", str(tmp_path / f"fold{fold}")]) == 0
    assert main([*train, "--subset", "all", "--out", str(tmp_path / "all")]) == 0
    target = tmp_path / "all" / "last.safetensors"
    folds = [str(tmp_path / f"fold{fold}" / "last.safetensors") for fold in (0, 1)]
    # the target trained on every image: refused without fold models
    assert main(["calibrate", "--checkpoint", str(target), *common, "--subset", "all"]) == 2
    assert main(["calibrate", "--checkpoint", str(target), *common, "--subset", "all", "--fold-models", *folds]) == 0

    records = coco_records(*coco_split(synthetic_coco, "train2017"))
    expected = np.zeros((len(records), 4, 4), np.float32)
    for fold, path in enumerate(folds):  # by hand: each image from the model that held it out
        held = {str(r.image_id) for r in fold_split(records, 2, fold)[1]}
        extra = checkpoint_extra(path)
        assert held.isdisjoint(map(str, extra["train_image_ids"]))
        assert extra["train"]["data"] == f"coco train2017 fit (fold {fold} of 2, seed 0): 3 images"
        mine = [k for k, r in enumerate(records) if str(r.image_id) in held]
        expected[mine] = predict_probs(load_checkpoint(path), [records[k] for k in mine])[0]
    stored = load_calibration(target)
    manual = calibrate(expected, LEVELS, grid=stored.grid, source=stored.source)
    assert stored.thresholds == manual.thresholds and stored.images == len(records) == 6
    assert stored.source == "train2017 all, out of fold from 2 models"


def test_fold_models_must_each_leave_images_out(tmp_path, synthetic_coco):
    common = ["--coco-root", str(synthetic_coco), "--split", "train2017"]
    assert main(["train", *common, "--img-size", "64", "--depth", "1", "--epochs", "1", "--no-progress",
                 "--out", str(tmp_path / "all")]) == 0
    path = str(tmp_path / "all" / "last.safetensors")
    assert main(["calibrate", "--checkpoint", path, *common, "--subset", "all", "--fold-models", path]) == 2
