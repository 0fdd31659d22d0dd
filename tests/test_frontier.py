"""The cost-quality frontier (bavit.bench.frontier): points and labels, the Pareto rule by hand, the quality columns
against evaluate_checkpoint, the cost columns composed from a hand-made timing table, and the CLI end to end (no
wall-clock assertions)."""
import json
import shutil

import pytest
from apphelpers import random_bavit_checkpoint, tiny_yolos_dir

from bavit.bench import frontier
from bavit.bench.frontier import FrontierPoint, format_table, frontier_points, pareto, run_frontier
from bavit.pruning.keep_mask import kept_count
from bavit.cli import main
from bavit.core.checkpoint import read_checkpoint, save_checkpoint
from bavit.data.records import coco_records, coco_split
from bavit.engine.evaluate import evaluate_checkpoint
from bavit.errors import ConfigError
from bavit.engine.evaluate import predict_probs
from bavit.pruning.calibration import calibrate


def test_points_are_every_checkpoint_on_every_graph_with_readable_labels(tmp_path):
    run, shipped = tmp_path / "s256-fold-0" / "last.safetensors", tmp_path / "bavit-small-coco.safetensors"
    assert frontier_points([run, shipped]) == [FrontierPoint("s256-fold-0", run, "int8"),
                                              FrontierPoint("bavit-small-coco", shipped, "int8")]
    assert [(p.label, p.graph) for p in frontier_points([run], ("int8", "float32"), labels=["fast"])] == [
        ("fast int8", "int8"), ("fast float32", "float32")]
    with pytest.raises(ConfigError, match="1 labels for 2 checkpoints"):
        frontier_points([run, shipped], labels=["a"])
    with pytest.raises(ConfigError, match="share a label"):
        frontier_points([run, tmp_path / "other" / "s256-fold-0.safetensors"])
    with pytest.raises(ConfigError, match="graphs are int8 and float32, got int4"):
        frontier_points([run], ("int4",))


def test_pareto_keeps_what_nothing_beats_on_both_cost_and_recall():
    rows = [{"label": "slow-good", "bavit_ms": 30.0, "calibrated_pixel_recall": 0.99},
            {"label": "fast-poor", "bavit_ms": 8.0, "calibrated_pixel_recall": 0.95},
            {"label": "dominated", "bavit_ms": 12.0, "calibrated_pixel_recall": 0.94},
            {"label": "middle", "bavit_ms": 14.0, "calibrated_pixel_recall": 0.97},
            {"label": "uncalibrated", "bavit_ms": 5.0, "calibrated_pixel_recall": None},
            {"label": "tie-slower", "bavit_ms": 15.0, "calibrated_pixel_recall": 0.97}]
    assert pareto(rows) == ["fast-poor", "middle", "slow-good"]
    assert pareto(rows, "missing") == []
    assert kept_count(0.35, 32) == 666 and kept_count(0.0, 32) == 1024 and kept_count(0.35, 24) == 374


@pytest.fixture(scope="module")
def checkpoints(synthetic_coco, tmp_path_factory):
    """Two random-init BAViT-small checkpoints calibrated on the synthetic val images; the second records two of
    them as its training images."""
    records = coco_records(*coco_split(synthetic_coco, "val2017"))
    folder = tmp_path_factory.mktemp("frontier")
    paths = []
    for seed in (0, 1):
        path = shutil.copyfile(random_bavit_checkpoint(seed), folder / f"bavit-{seed}.safetensors")
        saved = read_checkpoint(path)
        probs, _ = predict_probs(saved.model, records, backend="onnxruntime")
        calibration = calibrate(probs, levels=(0.2, 0.35, 0.5), cca_steps=(0, 3), source="synthetic val2017")
        extra = {"train_image_ids": [r.image_id for r in records[:2]]} if seed else {}
        save_checkpoint(saved.model, path, extra, calibration.to_dict())
        paths.append(path)
    return paths


def test_quality_is_evaluate_checkpoints_and_cost_is_composed_from_the_timing(synthetic_coco, checkpoints,
                                                                              monkeypatch):
    records = coco_records(*coco_split(synthetic_coco, "val2017"))
    calls = []

    def medians(runs, repeats, warmup=2):  # stands in for interleaved_medians: every call once, hand-made ms
        calls.append((sorted(runs), repeats))
        for run in runs.values():
            run()
        return {"dense": 200.0, "pruned": 120.0, "a": 10.0, "b": 30.0}

    monkeypatch.setattr(frontier, "interleaved_medians", medians)
    points = frontier_points(checkpoints, labels=["a", "b"])
    report = run_frontier(points, records, sparsity=0.35, threads=1, repeats=3, images=2, data="synthetic",
                          detector=tiny_yolos_dir(), progress=lambda _: None)
    assert calls == [(["a", "b", "dense", "pruned"], 3)]
    assert report["dense_ms"] == 200.0 and report["pruned_yolos_ms"] == 120.0 and report["kept_patches"] == 666
    assert report["timing_images"] == 2 and report["threads"] == 1 and "tiny-random" in report["detector"]
    for row, path, ms in zip(report["rows"], checkpoints, (10.0, 30.0)):
        assert row["bavit_ms"] == ms and row["share_of_dense"] == ms / 200.0
        assert row["speedup_parts"] == 200.0 / (ms + 120.0)
        expected, _, _ = evaluate_checkpoint(read_checkpoint(path), records, levels=(0.35,), backend="onnxruntime")
        level = expected["budget"]["0.35"]
        assert row["token_accuracy"] == expected["token_accuracy"]
        assert row["topk_pixel_recall"] == level["bavit_topk"]["pixel_recall"]
        assert row["oracle_pixel_recall"] == level["oracle"]["pixel_recall"]
        assert (row["calibrated_pixel_recall"], row["calibrated_keep_rate"], row["calibrated_sparsity_mean"]) == (
            level["bavit_calibrated"]["pixel_recall"], level["bavit_calibrated"]["keep_rate"],
            level["bavit_calibrated"]["sparsity_mean"])
        assert row["img_size"] == 384 and row["stem"] == "patch" and row["graph"] == "int8"
    assert [row["seen"] for row in report["rows"]] == [0, 2]
    table = format_table(report)
    assert "(trained on 2 of these 3 images)" in table and "| 10.0 | 5.0% | 1.54x |" in table


@pytest.mark.slow
def test_frontier_cli_writes_json_and_plot(synthetic_coco, checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    out_json, out_png = tmp_path / "frontier.json", tmp_path / "frontier.png"
    code = main(["frontier", "--checkpoint", str(checkpoints[0]), "--graphs", "int8", "float32",
                 "--coco-root", str(synthetic_coco), "--split", "val2017", "--detector", str(tiny_yolos_dir()),
                 "--repeats", "1", "--timing-images", "2", "--threads", "1", "--json", str(out_json),
                 "--plot", str(out_png)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "| bavit-0 int8 |" in printed.replace("**", "").replace(" ★", "") and "dense YOLOS-tiny" in printed
    report = json.loads(out_json.read_text())
    assert [row["label"] for row in report["rows"]] == ["bavit-0 int8", "bavit-0 float32"]
    assert report["data"] == "3 images of val2017 all" and report["repeats"] == 1
    for row in report["rows"]:
        assert row["bavit_ms"] > 0 and row["share_of_dense"] == row["bavit_ms"] / report["dense_ms"]
    # int8 MatMuls move the probabilities a little, the float32 graph is torch's within 1e-5
    float32 = report["rows"][1]
    expected, _, _ = evaluate_checkpoint(read_checkpoint(checkpoints[0]), coco_records(
        *coco_split(synthetic_coco, "val2017")), levels=(0.35,), backend="torch")
    assert float32["token_accuracy"] == expected["token_accuracy"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_frontier_arguments_are_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    path = str(random_bavit_checkpoint(0))
    for argv, message in ((["--labels", "a", "b"], "2 labels for 1 checkpoints"),
                          (["--sparsity", "1.5"], "--sparsity is in (0, 1)"),
                          (["--repeats", "0"], "--repeats, --timing-images and --threads are >= 1")):
        code = main(["frontier", "--checkpoint", path, *argv])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err
