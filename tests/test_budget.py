"""Pruning quality at a budget and calibrated sparsity: hand-made grids with exact answers, the CLIs end to end."""
import json
import re

import numpy as np
import pytest
import torch

from bavit.cli import main
from bavit.core.config import SMALL
from bavit.core.model import build_bavit, load_checkpoint, read_checkpoint_metadata, save_checkpoint
from bavit.data.records import Instance, Record, coco_records, coco_split, holdout_split
from bavit.engine.budget import BudgetMetrics, ImageObjects, evaluate_budget, image_objects, top_k_mask
from bavit.errors import ConfigError
from bavit.predictor import Predictor
from bavit.pruning.calibration import (
    calibrate,
    load_calibration,
    save_calibration,
    sparsity_at,
    sparsity_standard_error,
)


def test_pixel_recall_keep_rate_and_sparsity_by_hand():
    objects = ImageObjects(
        union=np.array([[1.0, 0.5], [0.5, 0.0]]),
        instances=[(np.array([[1.0, 0.0], [0.0, 0.0]]), "small"),  # fully kept
                   (np.array([[0.0, 0.5], [0.5, 0.0]]), "medium"),  # exactly half kept: counts as kept
                   (np.array([[0.0, 0.4], [0.1, 0.0]]), "large")])  # 20% kept: lost
    keep = np.array([[True, False], [True, False]])
    metrics = BudgetMetrics()
    metrics.update(keep, objects)
    metrics.update(np.ones((2, 2), bool), ImageObjects(np.array([[0.0, 0.0], [0.0, 1.0]])))  # all kept, no instance
    summary = metrics.summary()
    assert summary["pixel_recall"] == pytest.approx((1.0 + 0.5 + 1.0) / (2.0 + 1.0))
    assert summary["keep_rate"] == pytest.approx(2 / 3)
    assert (summary["keep_rate_small"], summary["keep_rate_medium"], summary["keep_rate_large"]) == (1.0, 1.0, 0.0)
    assert summary["sparsity_mean"] == pytest.approx(0.25)
    assert summary["sparsity_p10"] == pytest.approx(0.05) and summary["sparsity_p90"] == pytest.approx(0.45)
    single = BudgetMetrics()
    single.update(keep, objects)
    assert single.summary()["pixel_recall"] == 0.75


def test_image_objects_are_exact_area_fractions_without_crowds():
    def box_mask(y0, y1, x0, x1):
        mask = np.zeros((64, 64), bool)
        mask[y0:y1, x0:x1] = True
        return lambda: mask

    record = Record(image_path=None, width=64, height=64, instances=[
        Instance((0, 0, 32, 32), 32 * 32, False, box_mask(0, 32, 0, 32)),
        Instance((0, 0, 48, 16), 16 * 48, False, box_mask(0, 16, 0, 48)),  # overlaps the first: counted once
        Instance((32, 32, 64, 64), 32 * 32, True, box_mask(32, 64, 32, 64)),  # crowd: left out
    ])
    objects = image_objects(record, grid=2)
    np.testing.assert_allclose(objects.union, [[1.0, 0.25], [0.0, 0.0]])
    assert [size for _, size in objects.instances] == ["medium", "small"]  # COCO: small is area < 32²
    np.testing.assert_allclose(objects.instances[1][0], [[0.5, 0.25], [0.0, 0.0]])


def test_top_k_mask_counts_and_order():
    scores = np.array([[0.1, 0.9], [0.5, 0.5]])
    assert top_k_mask(scores, 2).tolist() == [[False, True], [True, False]]  # ties: row-major order
    assert top_k_mask(scores, 0).sum() == 0 and top_k_mask(scores, 4).all()


def blob_probs(count: int, seed: int = 0) -> torch.Tensor:
    """``[count, 24, 24]`` probabilities shaped like a detector's: a few soft blobs per image plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:24, 0:24]
    probs = []
    for _ in range(count):
        field = np.zeros((24, 24))
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.uniform(0, 24), rng.uniform(0, 24), rng.uniform(2, 8)
            field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        probs.append(0.7 * field / field.max() + 0.25 * rng.random((24, 24)))  # distinct values in (0, 0.95)
    return torch.tensor(np.array(probs), dtype=torch.float32)


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


def test_calibration_survives_a_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_bavit(SMALL)
    path = save_checkpoint(model, tmp_path / "m.safetensors", extra={"epoch": 3})
    before = read_checkpoint_metadata(path)
    assert load_calibration(path) is None
    calibration = calibrate(blob_probs(6), levels=(0.0, 0.35, 0.5), cca_steps=(0, 3), source="test")
    save_calibration(path, calibration)
    assert load_calibration(path) == calibration
    after = read_checkpoint_metadata(path)
    assert {k: v for k, v in after.items() if k != "calibration"} == before  # config and extra untouched
    reloaded = load_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))
    assert list(tmp_path.iterdir()) == [path]  # no temp file left


def test_predictor_calibrated_mode(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(build_bavit(SMALL), tmp_path / "m.safetensors")
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    uncalibrated = Predictor(path, detector=None)
    with pytest.raises(ConfigError, match="no calibration"):
        uncalibrated.analyze(image, sparsity=0.35)
    prepared = uncalibrated.set_image(image)
    calibration = calibrate(prepared.fg_prob[None], levels=(0.0, 0.35, 0.5), cca_steps=(0, 3))
    save_calibration(path, calibration)
    predictor = Predictor(path, detector=None)
    assert predictor.calibration == calibration
    result = predictor.predict(prepared, sparsity=0.35, cca_steps=3, detect=False)
    threshold = calibration.threshold(0.35, 3)
    assert result.settings["threshold"] == threshold
    np.testing.assert_array_equal(result.keep_mask,
                                  predictor.predict(prepared, threshold=threshold, cca_steps=3, detect=False).keep_mask)
    # calibrated on this one image: its own sparsity is the target's
    assert result.accounting.sparsity == pytest.approx(calibration.achieved[3][1])
    with pytest.raises(ConfigError, match="one of"):
        predictor.predict(prepared, sparsity=0.35, threshold=0.5)


def test_holdout_split_is_deterministic_and_disjoint(synthetic_coco):
    records = coco_records(*coco_split(synthetic_coco, "train2017"))
    fit, held = holdout_split(records, fraction=0.5, seed=0)
    assert len(held) == 3 and len(fit) == 3
    assert {r.image_id for r in fit}.isdisjoint(r.image_id for r in held)
    fit2, held2 = holdout_split(list(reversed(records)), fraction=0.5, seed=0)  # the order does not matter
    assert {r.image_id for r in held2} == {r.image_id for r in held}
    with pytest.raises(Exception, match="fraction"):
        holdout_split(records, fraction=1.0)


@pytest.mark.slow
def test_calibrate_and_evaluate_budget_cli(synthetic_coco, tmp_path, capsys):
    records = coco_records(*coco_split(synthetic_coco, "train2017"))
    fit, held = holdout_split(records, fraction=0.5, seed=0)
    torch.manual_seed(0)
    path = save_checkpoint(build_bavit(SMALL), tmp_path / "m.safetensors",
                           extra={"train_image_ids": [r.image_id for r in fit]})
    common = ["--coco-root", str(synthetic_coco), "--split", "train2017", "--holdout-fraction", "0.5"]
    assert main(["calibrate", "--checkpoint", str(path), *common, "--subset", "fit"]) == 2  # images it trained on
    assert "used to train this checkpoint" in capsys.readouterr().err
    assert main(["calibrate", "--checkpoint", str(path), *common]) == 0  # default: the held-out part
    printed = capsys.readouterr().out
    assert "calibrated" in printed and "(standard error, points)" in printed
    assert re.search(r"\| 35% \| [0-9.]+ \| [0-9.]+% \((±[0-9.]+|-)\) \|", printed), printed
    calibration = load_calibration(path)
    assert calibration.images == len(held) and "holdout" in calibration.source
    out_json, out_png = tmp_path / "eval.json", tmp_path / "budget.png"
    assert main(["evaluate", "--checkpoint", str(path), "--coco-root", str(synthetic_coco), "--split", "val2017",
                 "--sparsity", "0.2", "0.5", "--json", str(out_json), "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert "Pruning quality at a budget" in printed and "bavit_calibrated_cca" in printed
    budget = json.loads(out_json.read_text())["budget"]
    assert set(budget) == {"0.20", "0.50"}
    for level, row in budget.items():
        assert set(row) == {"bavit_topk", "bavit_calibrated", "bavit_calibrated_cca", "centre", "random", "oracle"}
        for method in ("oracle", "random", "centre"):  # top-k on the detector grid: the level, up to rounding
            assert abs(row[method]["sparsity_mean"] - float(level)) <= 0.02
        assert row["oracle"]["pixel_recall"] >= max(m["pixel_recall"] for m in row.values()) - 1e-12
        assert {"pixel_recall", "keep_rate", "keep_rate_small", "keep_rate_medium", "keep_rate_large",
                "sparsity_mean", "sparsity_p10", "sparsity_p90"} <= set(row["bavit_calibrated"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_budget_at_zero_sparsity_keeps_everything(synthetic_coco):
    records = coco_records(*coco_split(synthetic_coco, "val2017"))
    probs = blob_probs(len(records), seed=3).numpy()
    budget = evaluate_budget(probs, records, levels=(0.0,), prior=np.full((24, 24), 0.3))
    for method in ("bavit_topk", "centre", "random", "oracle"):
        assert budget["0.00"][method]["pixel_recall"] == pytest.approx(1.0)
        assert budget["0.00"][method]["keep_rate"] == 1.0 and budget["0.00"][method]["sparsity_mean"] == 0.0
    assert "bavit_calibrated" not in budget["0.00"]  # no calibration given
