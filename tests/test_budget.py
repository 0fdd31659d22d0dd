"""Pruning quality at a budget (bavit.engine.budget): hand-made grids with exact answers, the CLIs end to end.
(Calibrated sparsity itself: tests/test_calibration.py.)"""
import json
import re

import numpy as np
import pytest
import torch

from bavit.cli import main
from bavit.core.config import SMALL
from bavit.core.checkpoint import read_checkpoint, save_checkpoint
from bavit.core.model import build_bavit
from bavit.data.records import Instance, Record, coco_records, coco_split
from bavit.data.splits import holdout_split
from bavit.engine.budget import BudgetMetrics, ImageObjects, evaluate_budget, image_objects, top_k_mask
from bavit.pruning.calibration import Calibration
from conftest import blob_probs


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
    calibration = Calibration.from_checkpoint(read_checkpoint(path))
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
