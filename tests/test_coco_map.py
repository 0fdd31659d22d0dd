"""COCO mAP harness (the wrapper itself: test_cocoeval.py): label ids map to COCO category ids, its rows are the
Predictor's results, a tiny random YOLOS saved with save_pretrained runs end to end (structure only: its numbers mean nothing), and missing
weights stop with a clear message."""
import json

import numpy as np
import pytest
import torch
from transformers import YolosConfig, YolosForObjectDetection

from bavit.cli import main
from bavit.core.config import SMALL
from bavit.core.checkpoint import save_checkpoint
from bavit.core.model import build_bavit
from bavit.data.coco import CocoDetection, label_to_category, load_coco, yolos_targets
from bavit.engine.coco_map import make_settings, setting_name
from bavit.engine.cocoeval import STAT_NAMES
from bavit.errors import ConfigError, DataError, WeightsUnavailableError
from bavit.pruning.detector import HOW_TO_GET_WEIGHTS, load_yolos_model
from bavit.pruning.settings import PruningSettings
from conftest import coco91_id2label, write_tiny_coco


def test_yolos_tiny_label_ids_are_coco_category_ids(coco_root, tmp_path):
    coco = load_coco(coco_root / "annotations" / "instances_val2017.json")
    id2label = coco91_id2label(coco)  # hustvl/yolos-tiny's layout: 91 slots, slot = category id, gaps "N/A"
    assert len(id2label) == 91 and id2label[0] == "N/A" and id2label[1] == "person" and id2label[90] == "toothbrush"
    assert [i for i, name in id2label.items() if name == "N/A"] == [0, 12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    mapping = label_to_category(id2label, coco)
    assert mapping == {cat: cat for cat in coco.cats}  # the identity on the 80 used ids
    # A dataset numbered otherwise is still mapped by name.
    tiny = load_coco(write_tiny_coco(tmp_path))
    assert label_to_category(id2label, tiny) == {17: 17, 18: 18}
    assert label_to_category({0: "dog", 1: "Cat"}, tiny) == {0: 18, 1: 17}
    with pytest.raises(ConfigError, match="none of the detector's 2 label names"):
        label_to_category({0: "LABEL_0", 1: "LABEL_1"}, tiny)


def test_training_targets_are_normalised_cxcywh_without_crowds(tmp_path):
    coco = load_coco(write_tiny_coco(tmp_path))
    target = yolos_targets(coco.imgToAnns[2], 64, 48, {18: 18})
    assert target["class_labels"].tolist() == [18]
    torch.testing.assert_close(target["boxes"], torch.tensor([[30 / 64, 25 / 48, 40 / 64, 30 / 48]]))


def test_settings_and_bad_values():
    settings = make_settings([0.5], [0.65], cca_steps=2)
    assert settings[0] is None  # dense
    assert settings[1] == PruningSettings(threshold=0.5, cca_steps=2)
    assert settings[2] == PruningSettings(keep_ratio=0.65, cca_steps=2)
    assert [setting_name(s) for s in settings] == ["YOLOS (dense)", "BAViT+YOLOS thr 0.5", "BAViT+YOLOS keep 0.65"]
    with pytest.raises(ConfigError):
        make_settings([1.5])
    with pytest.raises(ConfigError):
        make_settings([], [0.0])


@pytest.mark.slow
def test_harness_rows_are_the_predictors_single_image_results(coco_root, tmp_path):
    """run_map's rows prune and detect exactly what the app's Predictor.predict gives image by image."""
    from bavit.engine.coco_map import run_map
    from bavit.predictor import Predictor

    coco = load_coco(coco_root / "annotations" / "instances_val2017.json")
    detector = load_yolos_model(tiny_yolos_dir(coco, tmp_path / "tiny-yolos"))
    torch.manual_seed(0)
    predictor = Predictor(bavit=build_bavit(SMALL).eval(), detector=detector, backend="torch", score_threshold=0.0)
    dataset = CocoDetection(coco_root / "annotations" / "instances_val2017.json", coco_root / "val2017", limit=3)
    images = [dataset[i].image for i in range(3)]
    probs = np.stack([predictor.set_image(image).fg_prob for image in images])
    threshold = float(np.median(probs))  # a random BAViT: put the threshold where it splits the grids
    settings = make_settings([threshold], [0.3])
    report = run_map(predictor, dataset, settings, batch_size=2, progress=False)
    for setting, row in zip(settings[1:], report["rows"][1:]):
        single = [predictor.predict(predictor.set_image(image), setting) for image in images]
        kept = [int(analysis.keep_mask.sum()) for analysis in single]
        assert all(0 < k < 1024 for k in kept) and len(set(kept)) > 1  # the images differ, so a mix-up would show
        assert row["kept_patches"] == pytest.approx(np.mean(kept), abs=1e-9)
        assert row["detections"] == sum(len(analysis.detections) for analysis in single) == 3 * 10
    assert report["rows"][0]["kept_patches"] == 1024 and report["cca_steps"] == 3
    # what pruning cost without ground truth: each pruned row's AP against the dense row's detections
    assert report["rows"][0]["mAP_vs_dense"] is None
    assert all(0.0 <= row["mAP_vs_dense"] <= 1.0 for row in report["rows"][1:])
    everything = run_map(predictor, dataset, [None, PruningSettings(keep_ratio=1.0, cca_steps=0)], batch_size=3,
                         progress=False)["rows"][1]  # nothing pruned: the dense detections found again
    assert everything["kept_patches"] == 1024 and everything["mAP_vs_dense"] == pytest.approx(1.0)
    assert everything["AP50_vs_dense"] == pytest.approx(1.0)


def test_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        CocoDetection(tmp_path / "missing.json", tmp_path)
    ann = write_tiny_coco(tmp_path)  # images not written
    with pytest.raises(DataError, match="2 of 2 images listed in instances_tiny.json are missing"):
        CocoDetection(ann, tmp_path)
    (tmp_path / "bad.json").write_text("{\"images\": 3}")
    with pytest.raises(DataError, match="not a valid COCO annotation file|not a COCO instances file"):
        CocoDetection(tmp_path / "bad.json", tmp_path)


def tiny_yolos_dir(coco, path, image_size=512):
    """A random YOLOS with yolos-tiny's label layout, saved the way users save the real one."""
    id2label = coco91_id2label(coco)
    config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=[image_size, image_size], num_detection_tokens=10, id2label=id2label,
                         label2id={name: i for i, name in id2label.items()})
    torch.manual_seed(0)
    YolosForObjectDetection(config).save_pretrained(path)
    return path


@pytest.mark.slow
def test_harness_runs_end_to_end_on_a_saved_random_yolos(coco_root, tmp_path, capsys):
    """Structure only: a random detector's mAP is meaningless and is not asserted or reported."""
    coco = load_coco(coco_root / "annotations" / "instances_val2017.json")
    detector_dir = tiny_yolos_dir(coco, tmp_path / "tiny-yolos")
    assert load_yolos_model(detector_dir).config.num_detection_tokens == 10  # the same from_pretrained path
    bavit_path = save_checkpoint(build_bavit(SMALL), tmp_path / "bavit.safetensors")
    out_json, out_md = tmp_path / "table2.json", tmp_path / "table2.md"
    code = main(["map", "--detector", str(detector_dir), "--coco-root", str(coco_root), "--split", "val2017",
                 "--bavit", str(bavit_path), "--thresholds", "0.5", "--keep-ratios", "0.6", "--limit", "3",
                 "--json", str(out_json), "--markdown", str(out_md), "--no-progress"])
    assert code == 0
    report = json.loads(out_json.read_text())
    assert report["images"] == 3 and report["cca_steps"] == 3 and report["image_size"] == 512
    assert report["label_mapping"].startswith("identity")
    rows = report["rows"]
    assert [r["model"] for r in rows] == ["YOLOS (dense)", "BAViT+YOLOS thr 0.5", "BAViT+YOLOS keep 0.6"]
    keys = {"model", "threshold", "keep_ratio", "sparsity", "bavit_tokens", "yolos_tokens", "yolos_pruned_tokens",
            "total_tokens", "token_reduction_pct", "detections", *STAT_NAMES}
    assert all(keys <= set(r) for r in rows)
    dense = rows[0]
    # Dense: nothing pruned, no BAViT; token counts are exact (2 layers x 1024 patches for this tiny YOLOS).
    assert dense["sparsity"] == 0.0 and dense["bavit_tokens"] == 0 and dense["token_reduction_pct"] == 0.0
    assert dense["yolos_tokens"] == dense["yolos_pruned_tokens"] == dense["total_tokens"] == 2 * 1024
    for row in rows[1:]:
        assert row["bavit_tokens"] == 1152 and 0.0 <= row["sparsity"] <= 1.0
        assert row["yolos_pruned_tokens"] == int(2 * row["kept_patches"] + 1e-6)  # truncated, as the paper does
        assert row["sparsity"] == pytest.approx(1 - row["kept_patches"] / 1024)
        assert row["total_tokens"] == 1152 + row["yolos_pruned_tokens"]
        reduction = 100 * (row["yolos_tokens"] - row["total_tokens"]) / row["yolos_tokens"]
        assert row["token_reduction_pct"] == pytest.approx(reduction)
    assert all(0 < r["detections"] <= 3 * 10 for r in rows)
    table = out_md.read_text().splitlines()
    assert table[0].startswith("| Model | Sparsity % | mAP | AP50 | AP_small |") and len(table) == 2 + len(rows)
    assert capsys.readouterr().out.splitlines()[0] == table[0]


def test_missing_detector_dir_and_offline_hub_are_clear_errors(coco_root, tmp_path, capsys):
    with pytest.raises(WeightsUnavailableError, match="detector directory not found") as excinfo:
        load_yolos_model(tmp_path / "no-such-dir")
    assert HOW_TO_GET_WEIGHTS in str(excinfo.value)
    code = main(["map", "--detector", str(tmp_path / "no-such-dir"), "--coco-root", str(coco_root), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: detector directory not found") and "Traceback" not in err
    # The real weights: hustvl/yolos-tiny from the (offline, in tests) hub.
    code = main(["map", "--detector", "hustvl/yolos-tiny", "--coco-root", str(coco_root), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: detector 'hustvl/yolos-tiny' is not in the local cache and the Hugging Face hub cannot be reached")
    assert HOW_TO_GET_WEIGHTS in err and "Traceback" not in err


def test_onnxruntime_backend_gives_the_torch_rows(coco_root, tmp_path):
    """The harness on both backends: the same kept patches, detections and COCOeval numbers (random tiny YOLOS)."""
    from bavit.engine.coco_map import run_map
    from bavit.predictor import Predictor

    coco = load_coco(coco_root / "annotations" / "instances_val2017.json")
    detector = load_yolos_model(tiny_yolos_dir(coco, tmp_path / "tiny-yolos"))
    dataset = CocoDetection(coco_root / "annotations" / "instances_val2017.json", coco_root / "val2017", limit=2)
    torch.manual_seed(0)
    bavit = build_bavit(SMALL).eval()
    settings = make_settings([0.5], [0.6])
    reports = {backend: run_map(Predictor(bavit=bavit, detector=detector, backend=backend, bavit_int8=False),
                                dataset, settings, progress=False)
               for backend in ("torch", "onnxruntime")}
    assert reports["onnxruntime"]["backend"] == "onnxruntime"
    for torch_row, ort_row in zip(reports["torch"]["rows"], reports["onnxruntime"]["rows"]):
        assert ort_row["kept_patches"] == torch_row["kept_patches"]
        assert ort_row["detections"] == torch_row["detections"] == 2 * 10
        for name in STAT_NAMES:
            assert ort_row[name] == pytest.approx(torch_row[name], abs=1e-6)
