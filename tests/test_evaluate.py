import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bavit.pruning.settings import PruningSettings
from bavit.core.config import SMALL
from bavit.core.checkpoint import save_checkpoint
from bavit.core.model import build_bavit
from bavit.data.records import coco_records, coco_split
from bavit.engine.evaluate import METRIC_KEYS, evaluate, predict_probs, score
from bavit.core.cca import cca
from bavit.engine.metrics import FN, FP, IGNORED, TN, TP, TokenMetrics, confusion_cells, confusion_counts, rates

ROOT = Path(__file__).resolve().parents[1]


def test_token_metrics_by_hand():
    labels = np.array([[1, 1, 0], [0, 0, -100]])
    predicted = np.array([[1, 0, 1], [0, 0, 1]], dtype=bool)
    metrics = TokenMetrics()
    metrics.update(predicted, labels)
    summary = metrics.summary()
    # valid tokens: 5 -> TP 1, FN 1, FP 1, TN 2
    assert summary["tokens"] == 5
    assert summary["token_accuracy"] == pytest.approx(3 / 5)
    assert summary["fg_precision"] == pytest.approx(1 / 2)
    assert summary["fg_recall"] == pytest.approx(1 / 2)
    assert summary["fg_iou"] == pytest.approx(1 / 3)
    assert summary["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_confusion_cells_counts_and_rates_by_hand():
    labels = np.array([[1, 1, 0], [0, 0, -100]])
    predicted = np.array([[1, 0, 1], [0, 0, 1]], dtype=bool)
    assert confusion_cells(predicted, labels).tolist() == [[TP, FN, FP], [TN, TN, IGNORED]]
    counts = confusion_counts(predicted, labels)
    assert counts == {"tp": 1, "fp": 1, "fn": 1, "tn": 2}
    assert rates(**counts) == {"token_accuracy": 3 / 5, "balanced_accuracy": (1 / 2 + 2 / 3) / 2,
                               "fg_precision": 1 / 2, "fg_recall": 1 / 2, "fg_iou": 1 / 3}
    # bool labels (a painted GT) have no ignored cells; batched grids count every image
    assert confusion_counts(predicted, labels == 1) == {"tp": 1, "fp": 2, "fn": 1, "tn": 2}
    assert confusion_counts(np.stack([predicted] * 3), np.stack([labels] * 3)) == {"tp": 3, "fp": 3, "fn": 3, "tn": 6}
    assert rates(0, 0, 0, 4)["fg_recall"] is None and rates(0, 0, 0, 0)["token_accuracy"] is None
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_cells(predicted, labels[:1])


def test_evaluate_structure_and_baselines(coco_root):
    records = coco_records(*coco_split(coco_root, "val2017"))[:6]
    model = build_bavit(SMALL)
    result = evaluate(model, records, threshold=0.5, cca_steps=3, sweep=(0.5, 0.0))
    # The sweep reuses the same predictions: at the main threshold it equals the main result ...
    assert result["sweep"][0]["raw"] == {k: v for k, v in result.items() if k in result["sweep"][0]["raw"]}
    assert result["sweep"][0]["after_cca"] == result["after_cca"]
    # ... and threshold 0 keeps every token (recall 1, predicted FG fraction 1).
    assert result["sweep"][1]["raw"]["fg_recall"] == 1.0 and result["sweep"][1]["raw"]["predicted_fg_fraction"] == 1.0
    for section in (result, result["after_cca"], result["baselines"]["all_background"], result["baselines"]["center_prior"]):
        for key in (*METRIC_KEYS, "images", "tokens"):
            assert key in section
        assert section["images"] == 6 and section["tokens"] == 6 * 576
    background = result["baselines"]["all_background"]
    assert background["token_accuracy"] == pytest.approx(1 - background["gt_fg_fraction"])
    assert background["fg_recall"] == 0 and background["fg_precision"] is None and background["object_keep_rate"] == 0
    # CCA only adds FG, so recall cannot drop.
    assert result["after_cca"]["fg_recall"] >= result["fg_recall"]
    assert result["after_cca"]["predicted_fg_fraction"] >= result["predicted_fg_fraction"]


@pytest.mark.slow
def test_evaluate_cli_prints_table_and_writes_json(coco_root, tmp_path):
    checkpoint = save_checkpoint(build_bavit(SMALL), tmp_path / "m.safetensors")
    out = tmp_path / "eval.json"
    result = subprocess.run([sys.executable, "-m", "bavit", "evaluate", "--checkpoint", str(checkpoint),
                             "--coco-root", str(coco_root), "--split", "val2017", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| BAViT |" in result.stdout and "| all background |" in result.stdout
    data = json.loads(out.read_text())
    assert data["images"] == 206 and data["tokens"] == 206 * 576
    assert round(data["baselines"]["all_background"]["token_accuracy"], 3) == 0.626
    assert set(data["object_keep_rate_by_size"]) == {"small", "medium", "large"}


@pytest.mark.slow
def test_evaluate_cli_wrong_checkpoint(tmp_path, coco_root):
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    result = subprocess.run([sys.executable, "-m", "bavit", "evaluate", "--checkpoint", str(tmp_path / "x.safetensors"),
                             "--coco-root", str(coco_root)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "error:" in result.stderr and "Traceback" not in result.stderr


def test_evaluate_keeps_a_probability_equal_to_the_threshold_as_the_predictor_does(coco_root):
    """The one rule (pruning.keep_mask: prob >= threshold) in evaluate too: at a threshold equal to a predicted
    probability that token counts as FG, before and after CCA."""
    import torch

    from bavit.predictor import Predictor

    records = coco_records(*coco_split(coco_root, "val2017"))[:3]
    torch.manual_seed(0)
    model = build_bavit(SMALL)
    probs, labels = predict_probs(model, records)
    threshold = float(np.sort(probs.ravel())[probs.size // 2])  # a probability some token has exactly
    result = evaluate(model, records, threshold=threshold, cca_steps=3)
    at_least, above = probs >= threshold, probs > threshold
    assert at_least.sum() > above.sum()  # the cases differ on these images
    grid = model.config.grid_size
    expected = score(at_least, labels, records, grid)
    assert {key: result[key] for key in expected} == expected
    assert result["after_cca"] == score(cca(torch.from_numpy(at_least), steps=3).numpy(), labels, records, grid)
    predictor = Predictor(bavit=model, detector=None, backend="torch")
    analysis = predictor.predict(predictor.set_image(records[0].image_path), PruningSettings(threshold=threshold, cca_steps=3))
    first = predictor.set_image(records[0].image_path).fg_prob
    assert np.array_equal(np.asarray(first), probs[0])  # the same probabilities (same preprocessing)
    assert np.array_equal(np.asarray(analysis.grid_raw), at_least[0])
