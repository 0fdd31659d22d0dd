"""Recall vs end-to-end latency: the per-image interpolation by hand, the quality rows against evaluate_budget, the
latency composed from a hand-made timing table, and the CLI end to end (no wall-clock assertions)."""
import json
import shutil

import numpy as np
import pytest
from apphelpers import random_bavit_checkpoint, tiny_yolos_dir

from bavit.bench import tradeoff
from bavit.bench.tradeoff import BAVIT_METHODS, count_grid, mean_pruned_ms, run_tradeoff
from bavit.cli import main
from bavit.core.checkpoint import read_checkpoint, save_checkpoint
from bavit.data.records import coco_records, coco_split
from bavit.engine.budget import evaluate_budget
from bavit.engine.evaluate import predict_probs
from bavit.errors import ConfigError
from bavit.predictor import Predictor
from bavit.pruning.calibration import Calibration, calibrate

SUMMARY_KEYS = ("pixel_recall", "keep_rate", "keep_rate_small", "keep_rate_medium", "keep_rate_large",
                "sparsity_mean", "sparsity_p10", "sparsity_p90", "images", "instances")


def test_mean_pruned_ms_interpolates_each_image_not_the_mean_count():
    counts, pruned_ms = [128, 256, 512, 1024], [10.0, 12.0, 20.0, 50.0]
    # 192 -> 11 ms, 768 -> 35 ms: mean 23 ms; at their mean count (480) the table gives 19 ms
    assert mean_pruned_ms([192, 768], counts, pruned_ms) == 23.0
    assert float(np.interp(480, counts, pruned_ms)) == 19.0
    assert mean_pruned_ms([512, 512, 1024], counts, pruned_ms) == 30.0  # measured points are exact
    assert mean_pruned_ms([1, 2000], counts, pruned_ms) == 30.0  # outside the table: its end points


def test_count_grid():
    assert count_grid(1024) == [128, 256, 384, 512, 640, 768, 896, 1024]
    assert count_grid(1024, observed=[45, 300, 1000]) == [45, 128, 256, 384, 512, 640, 768, 896, 1000, 1024]
    assert count_grid(1024, observed=[0, 1024]) == [1, 128, 256, 384, 512, 640, 768, 896, 1024]
    assert count_grid(64, observed=[10], counts=[64, 32]) == [10, 32, 64]
    with pytest.raises(ConfigError, match="1..1024"):
        count_grid(1024, counts=[0, 512])


@pytest.fixture(scope="module")
def checkpoints(synthetic_coco, tmp_path_factory):
    """Two random-init BAViT-small checkpoints (seeds 0, 1) with a coarse calibration on the synthetic val images
    (5 levels; CCA 0 and 3, what the budget methods ask for): quicker than the app tests' full calibration."""
    records = coco_records(*coco_split(synthetic_coco, "val2017"))
    folder = tmp_path_factory.mktemp("tradeoff")
    paths = []
    for seed in (0, 1):
        path = shutil.copyfile(random_bavit_checkpoint(seed), folder / f"bavit-{seed}.safetensors")
        saved = read_checkpoint(path)
        probs, _ = predict_probs(saved.model, records)
        calibration = calibrate(probs, levels=(0.0, 0.25, 0.5, 0.75, 0.9), cca_steps=(0, 3), source="synthetic val2017")
        save_checkpoint(saved.model, path, saved.extra, calibration.to_dict())
        paths.append(path)
    return paths


def _timing_table(calls):
    """Stands in for interleaved_medians: runs every call once, returns hand-made ms (pruned: quadratic in count)."""
    def medians(runs, repeats, warmup=2):
        calls.append(sorted(runs))
        for run in runs.values():
            run()
        table = {"dense": 100.0, "bavit a": 5.0, "bavit b": 7.5}
        table.update({name: 10.0 + int(name.split()[1]) ** 2 / 1e4 for name in runs if name.startswith("pruned ")})
        return table
    return medians


def test_run_tradeoff_quality_is_evaluate_budget_and_latency_is_composed_per_image(synthetic_coco, checkpoints,
                                                                                    monkeypatch):
    records = coco_records(*coco_split(synthetic_coco, "val2017"))
    calls = []
    monkeypatch.setattr(tradeoff, "interleaved_medians", _timing_table(calls))
    levels = (0.2, 0.35, 0.5)
    report = run_tradeoff(checkpoints, records, labels=["a", "b"], levels=levels, methods=BAVIT_METHODS,
                          backend="torch", detector=str(tiny_yolos_dir()), log=lambda _: None)
    counts = report["latency"]["counts"]
    assert counts == sorted(counts) and {128, 256, 512, 1024} <= set(counts)
    assert calls == [sorted(["dense", "bavit a", "bavit b", *(f"pruned {c}" for c in counts)])]
    assert report["latency"]["pruned_ms"] == [10.0 + c**2 / 1e4 for c in counts]
    assert report["weights"]["detector_pretrained"] and report["threads"] >= 1 and report["images"] == 3
    assert len(report["rows"]) == 2 * len(levels) * len(BAVIT_METHODS)
    for label, path in zip(["a", "b"], checkpoints):
        saved = read_checkpoint(path)
        predictor = Predictor(saved.model, detector=None, backend="torch")
        probs, _ = predict_probs(predictor, records)  # as run_tradeoff scores
        budget = evaluate_budget(probs, records, levels, Calibration.from_checkpoint(saved), None, grid=32)
        rows = [row for row in report["rows"] if row["checkpoint"] == label]
        for row in rows:
            expected = budget[f"{row['level']:.2f}"][row["method"]]
            assert {key: row[key] for key in SUMMARY_KEYS} == {key: expected[key] for key in SUMMARY_KEYS}
            kept = np.array(row["kept_per_image"])
            assert len(kept) == 3 and min(counts) <= kept.min() and kept.max() <= max(counts)
            assert row["sparsity_mean"] == pytest.approx(1.0 - kept.mean() / 1024, abs=1e-12)
            bavit_ms = 5.0 if label == "a" else 7.5
            per_image = np.interp(kept, counts, [10.0 + c**2 / 1e4 for c in counts])
            assert row["bavit_ms"] == bavit_ms and row["pruned_yolos_ms"] == pytest.approx(per_image.mean())
            assert row["end_to_end_ms"] == pytest.approx(bavit_ms + per_image.mean())
            assert row["speedup"] == pytest.approx(100.0 / row["end_to_end_ms"])
        topk = [row for row in rows if row["method"] == "bavit_topk"]
        assert [row["level"] for row in topk] == list(levels)  # top-k comes close to each level on every image
        assert all(abs(row["sparsity_mean"] - row["level"]) < 0.05 for row in topk)


@pytest.mark.slow
def test_tradeoff_cli_writes_json_and_plot(synthetic_coco, checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    out_json, out_png = tmp_path / "tradeoff.json", tmp_path / "tradeoff.png"
    code = main(["tradeoff", "--checkpoint", *map(str, checkpoints), "--coco-root", str(synthetic_coco),
                 "--limit", "2", "--levels", "0.2", "0.5", "--detector", str(tiny_yolos_dir()), "--repeats", "1",
                 "--warmup", "0", "--threads", "1", "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "| bavit-1 | 50% | bavit_topk |" in printed and "dense YOLOS" in printed
    report = json.loads(out_json.read_text())
    assert report["backend"] == "onnxruntime" and report["images"] == 2 and report["threads"] == 1
    assert report["weights"]["detector_pretrained"] and "tiny-random" in report["weights"]["detector"]
    assert {(row["checkpoint"], row["level"], row["method"]) for row in report["rows"]} == {
        (f"bavit-{seed}", level, method)
        for seed in (0, 1) for level in (0.2, 0.5) for method in ("bavit_calibrated", "bavit_topk")}
    latency = report["latency"]
    for row in report["rows"]:
        assert len(row["kept_per_image"]) == 2 and row["bavit_ms"] == latency["bavit_ms"][row["checkpoint"]]
        expected = row["bavit_ms"] + np.interp(row["kept_per_image"], latency["counts"], latency["pruned_ms"]).mean()
        assert row["end_to_end_ms"] == pytest.approx(expected)
        assert row["speedup"] == pytest.approx(latency["dense_ms"] / row["end_to_end_ms"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_checkpoint_without_calibration_is_one_line(synthetic_coco, capsys, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # else the command notes on stderr that it is unset
    code = main(["tradeoff", "--checkpoint", str(random_bavit_checkpoint(0)), "--coco-root", str(synthetic_coco)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "python -m bavit calibrate" in err and "Traceback" not in err
