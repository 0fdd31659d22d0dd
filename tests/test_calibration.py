"""Calibrated sparsity (bavit.pruning.calibration): one threshold per target mean sparsity, hit on hand-made
probabilities; its standard error by hand; stored with the checkpoint and used by the Predictor; the held-out and
K-fold splits it is computed on (bavit.data.records), and calibrate --fold-models, where each image is scored by a
model that never trained on it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bavit.pruning.settings import PruningSettings
from bavit.cli import main
from bavit.core.checkpoint import read_checkpoint, save_checkpoint
from bavit.core.config import SMALL, BAViTConfig
from bavit.core.model import build_bavit
from bavit.data.records import Record, coco_records, coco_split
from bavit.data.splits import fold_split, holdout_split
from bavit.engine.evaluate import predict_probs
from bavit.errors import CheckpointError, ConfigError, DataError
from bavit.predictor import Predictor
from bavit.pruning.calibration import LEVELS, Calibration, calibrate, sparsity_at, sparsity_standard_error
from conftest import blob_probs


def test_calibration_hits_each_mean_sparsity_and_thresholds_rise():
    probs = blob_probs(24)
    calibration = calibrate(probs, cca_steps=(0, 3), grid=32)
    for steps in (0, 3):
        thresholds = np.array(calibration.thresholds[steps])
        assert (np.diff(thresholds) >= 0).all() and thresholds[0] == 0.0
        assert thresholds[-1] > thresholds[len(thresholds) // 2] > thresholds[5]
        for level, threshold, achieved in zip(calibration.levels, thresholds, calibration.achieved[steps]):
            mean = float(sparsity_at(probs, threshold, steps, 32).mean())
            assert mean == pytest.approx(achieved)
            assert abs(mean - level) <= 0.01, (steps, level, mean)
    # per image the sparsity follows the content: one threshold, different sparsities
    per_image = sparsity_at(probs, calibration.threshold(0.35, 3), 3, 32)
    assert float(per_image.max() - per_image.min()) > 0.2
    assert calibration.threshold(0.355, 0) == pytest.approx(np.mean(calibration.thresholds[0][35:37]))
    with pytest.raises(ConfigError, match="CCA steps"):
        calibration.threshold(0.35, 2)
    with pytest.raises(ConfigError, match="sparsity"):
        calibration.threshold(0.99, 0)


def test_sparsity_standard_error_by_hand():
    # 4 images on a 2x2 grid kept as is (detector grid 2): two all-FG (sparsity 0), two all-BG (sparsity 1).
    probs = torch.tensor([1.0, 0.0, 1.0, 0.0])[:, None, None].expand(4, 2, 2).clone()
    # per-image sparsities 0, 1, 0, 1: sample sd sqrt(1/3), over sqrt(4)
    assert sparsity_standard_error(probs, 0.5, 0, 2) == pytest.approx((1 / 3) ** 0.5 / 2)
    assert sparsity_standard_error(probs[:1], 0.5, 0, 2) is None  # one image: no spread to measure
    assert sparsity_standard_error(probs[[0, 2]], 0.5, 0, 2) == 0.0  # identical images


def metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_calibration_survives_a_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_bavit(SMALL)
    path = save_checkpoint(model, tmp_path / "m.safetensors", extra={"epoch": 3})
    before = metadata(path)
    saved = read_checkpoint(path)
    assert saved.calibration is None and Calibration.from_checkpoint(saved) is None
    calibration = calibrate(blob_probs(6), levels=(0.0, 0.35, 0.5), cca_steps=(0, 3), source="test")
    save_checkpoint(saved.model, path, saved.extra, calibration.to_dict())  # what python -m bavit calibrate does
    reloaded = read_checkpoint(path)
    assert Calibration.from_checkpoint(reloaded) == calibration
    after = metadata(path)
    assert {k: v for k, v in after.items() if k != "calibration"} == before  # config and extra untouched
    assert all(torch.equal(a, b) for a, b in zip(reloaded.model.state_dict().values(), model.state_dict().values()))
    assert list(tmp_path.iterdir()) == [path]  # no temp file left


def test_a_calibration_records_its_backend_and_older_ones_read_as_torch_float32(tmp_path):
    from bavit.deploy.runtime import bavit_graph_name
    from bavit.pruning.calibration import DEFAULT_CALIBRATION_BACKEND

    assert bavit_graph_name("torch") == "torch float32" == DEFAULT_CALIBRATION_BACKEND
    assert bavit_graph_name("onnxruntime") == "onnxruntime int8 MatMuls"  # what the app serves
    assert bavit_graph_name("onnxruntime", int8=False) == "onnxruntime float32"
    probs = blob_probs(6)
    served = calibrate(probs, levels=(0.0, 0.35), cca_steps=(0,), source="t", backend="onnxruntime int8 MatMuls")
    assert served.to_dict()["backend"] == "onnxruntime int8 MatMuls"
    assert Calibration.from_dict(served.to_dict()) == served
    path = save_checkpoint(build_bavit(BAViTConfig(img_size=64, depth=1)), tmp_path / "m.safetensors",
                           calibration=served.to_dict())
    assert Calibration.from_checkpoint(read_checkpoint(path)).backend == "onnxruntime int8 MatMuls"
    assert calibrate(probs, levels=(0.0, 0.35), cca_steps=(0,)).backend == "torch float32"
    older = Calibration.from_dict(GOOD)  # stored before calibrations recorded their backend
    assert "backend" not in GOOD and older.backend == "torch float32"
    assert older.threshold(0.25, 3) == 0.25


@pytest.mark.slow
def test_calibrate_on_the_served_backend_stores_it_and_its_thresholds(tmp_path, synthetic_coco):
    # An untrained model (no training images recorded: calibrate warns and goes on) on the 6 synthetic images.
    torch.manual_seed(0)
    model = build_bavit(BAViTConfig(img_size=64, depth=1))
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    common = ["--coco-root", str(synthetic_coco), "--split", "train2017", "--subset", "all"]
    assert main(["calibrate", "--checkpoint", str(path), *common, "--backend", "onnxruntime"]) == 0
    stored = Calibration.from_checkpoint(read_checkpoint(path))
    records = coco_records(*coco_split(synthetic_coco, "train2017"))
    served = predict_probs(model, records, backend="onnxruntime")[0]  # the int8 graph, as the app runs it
    assert stored.backend == "onnxruntime int8 MatMuls"
    assert stored.thresholds == calibrate(served, LEVELS, grid=stored.grid).thresholds


def test_an_invalid_stored_calibration_is_a_checkpoint_error(tmp_path):
    path = save_checkpoint(build_bavit(SMALL), tmp_path / "m.safetensors", calibration={"levels": [0.0, 0.5]})
    with pytest.raises(CheckpointError, match="stored calibration is invalid"):
        Calibration.from_checkpoint(read_checkpoint(path))


GOOD = {"levels": [0.0, 0.5], "thresholds": {"0": [0.0, 0.4], "3": [0.0, 0.5]},
        "achieved": {"0": [0.0, 0.5], "3": [0.0, 0.5]}, "grid": 32, "resample": "nearest", "images": 4, "source": "t"}
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("change,message", [
    ({"thresholds": {"0": [0.0, NAN]}}, r"thresholds\[0\] holds a number that is not finite"),
    ({"thresholds": {"0": [0.0, INF]}}, "not finite"),
    ({"achieved": {"0": [NAN, 0.5]}}, "not finite"),
    ({"levels": [0.5, 0.0]}, "ascending fractions"),
    ({"levels": [0.0, NAN]}, "not finite"),
    ({"levels": []}, "ascending fractions"),
    ({"levels": "ab"}, "levels must be a list of numbers"),
    ({"thresholds": {"0": [0.0]}}, r"one per level \(2\)"),
    ({"thresholds": {"0": ["0.0", "0.4"]}}, "list of numbers"),
    ({"thresholds": {"99": [0.0, 0.4]}}, "cca_steps"),
    ({"thresholds": {"1" + "0" * 400: [0.0, 0.4]}}, ""),  # a 401-digit CCA setting
    ({"thresholds": {"2.5": [0.0, 0.4]}}, ""),
    ({"thresholds": {}}, "no CCA setting"),
    ({"grid": 0}, "grid must be a positive whole number"),
    ({"images": 2.5}, "images must be a positive whole number"),
    ({"source": ["x"]}, "source must be a string"),
    ({"backend": 8}, "backend must be a string"),
])
def test_a_stored_calibration_that_is_not_finite_or_not_one_is_refused_by_the_predictor(tmp_path, change, message):
    """A stored calibration that is not finite or not well-formed (a NaN threshold, levels out of order, ...) is the
    one-line checkpoint error, from Predictor(...) as from Calibration.from_checkpoint, never NaN settings."""
    model = build_bavit(BAViTConfig(img_size=64, depth=1))
    path = save_checkpoint(model, tmp_path / "m.safetensors", calibration={**GOOD, **change})
    with pytest.raises(CheckpointError, match=f"stored calibration is invalid .*{message}"):
        Predictor(path, detector=None)
    good = save_checkpoint(model, tmp_path / "good.safetensors", calibration=GOOD)
    assert Predictor(good, detector=None).calibration.threshold(0.25, 3) == 0.25


def test_predictor_calibrated_mode(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(build_bavit(SMALL), tmp_path / "m.safetensors")
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    uncalibrated = Predictor(path, detector=None)
    with pytest.raises(ConfigError, match="no calibration"):
        uncalibrated.analyze(image, PruningSettings(sparsity=0.35))
    prepared = uncalibrated.set_image(image)
    calibration = calibrate(prepared.fg_prob[None], levels=(0.0, 0.35, 0.5), cca_steps=(0, 3))
    saved = read_checkpoint(path)
    save_checkpoint(saved.model, path, saved.extra, calibration.to_dict())
    predictor = Predictor(path, detector=None)
    assert predictor.calibration == calibration
    result = predictor.predict(prepared, PruningSettings(sparsity=0.35, cca_steps=3), detect=False)
    threshold = calibration.threshold(0.35, 3)
    assert result.threshold == threshold
    np.testing.assert_array_equal(result.keep_mask,
                                  predictor.predict(prepared, PruningSettings(threshold=threshold, cca_steps=3),
                                                    detect=False).keep_mask)
    # calibrated on this one image: its own sparsity is the target's
    assert result.accounting.sparsity == pytest.approx(calibration.achieved[3][1])
    with pytest.raises(ConfigError, match="one of"):
        predictor.predict(prepared, PruningSettings(sparsity=0.35, threshold=0.5))


def test_holdout_split_is_deterministic_and_disjoint(synthetic_coco):
    records = coco_records(*coco_split(synthetic_coco, "train2017"))
    fit, held = holdout_split(records, fraction=0.5, seed=0)
    assert len(held) == 3 and len(fit) == 3
    assert {r.image_id for r in fit}.isdisjoint(r.image_id for r in held)
    fit2, held2 = holdout_split(list(reversed(records)), fraction=0.5, seed=0)  # the order does not matter
    assert {r.image_id for r in held2} == {r.image_id for r in held}
    with pytest.raises(Exception, match="fraction"):
        holdout_split(records, fraction=1.0)


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
        fold_model = read_checkpoint(path)
        extra = fold_model.extra
        assert held.isdisjoint(map(str, extra["train_image_ids"]))
        assert extra["train"]["data"] == f"coco train2017 fit (fold {fold} of 2, seed 0): 3 images"
        mine = [k for k, r in enumerate(records) if str(r.image_id) in held]
        expected[mine] = predict_probs(fold_model.model, [records[k] for k in mine])[0]
    stored = Calibration.from_checkpoint(read_checkpoint(target))
    manual = calibrate(expected, LEVELS, grid=stored.grid, source=stored.source)
    assert stored.thresholds == manual.thresholds and stored.images == len(records) == 6
    assert stored.source == "train2017 all, out of fold from 2 models"


def test_fold_models_must_each_leave_images_out(tmp_path, synthetic_coco):
    common = ["--coco-root", str(synthetic_coco), "--split", "train2017"]
    assert main(["train", *common, "--img-size", "64", "--depth", "1", "--epochs", "1", "--no-progress",
                 "--out", str(tmp_path / "all")]) == 0
    path = str(tmp_path / "all" / "last.safetensors")
    assert main(["calibrate", "--checkpoint", path, *common, "--subset", "all", "--fold-models", path]) == 2
