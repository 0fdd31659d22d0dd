"""Sparse fine-tuning: loss goes down on a fixed batch of the synthetic COCO set (conftest), checkpoints are atomic
and loadable, and --resume continues exactly where an uninterrupted run would be. Tiny YOLOS built from a config."""
import json

import pytest
import torch
from transformers import YolosConfig, YolosForObjectDetection

from bavit.cli import main
from bavit.data.coco import CocoDetection, label_to_category
from bavit.engine.finetune import (
    TRAIN_STATE_FILE,
    FinetuneConfig,
    FinetuneSamples,
    collate,
    finetune,
    load_train_state,
    make_optimizer,
    train_step,
)
from bavit.errors import CheckpointError
from bavit.pruning.detector import load_yolos_model
from conftest import coco91_id2label
from bavit.pruning.yolos import patch_yolos

IMAGE_SIZE = 128  # 8x8 patch grid: GT-box masks prune a real share of it


@pytest.fixture(scope="module")
def train_images(synthetic_coco):
    return CocoDetection(synthetic_coco / "annotations" / "instances_train2017.json", synthetic_coco / "train2017",
                         limit=4)


def tiny_yolos(coco, seed: int = 0) -> YolosForObjectDetection:
    """A random YOLOS with hustvl/yolos-tiny's 91-slot COCO label layout, small enough for a test."""
    id2label = coco91_id2label(coco)
    config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=[IMAGE_SIZE, IMAGE_SIZE], num_detection_tokens=10, id2label=id2label,
                         label2id={name: i for i, name in id2label.items()})
    torch.manual_seed(seed)
    return YolosForObjectDetection(config)


def test_loss_decreases_on_a_fixed_batch(train_images):
    torch.manual_seed(0)
    model = patch_yolos(tiny_yolos(train_images.coco))
    cfg = FinetuneConfig(lr=1e-3, image_size=IMAGE_SIZE)
    category_to_label = {c: l for l, c in label_to_category(model.config.id2label, train_images.coco).items()}
    samples = FinetuneSamples(train_images, category_to_label, cfg, patch_size=16)
    batch = collate([samples[i] for i in range(len(samples))])
    keep = batch["gt_keep"]
    assert keep.shape == (4, 8, 8) and keep.dtype == torch.bool
    assert 0 < int(keep.sum()) < keep.numel()  # really sparse: some patches pruned, some kept
    for target in batch["targets"]:
        boxes = target["boxes"]
        assert boxes.shape[1] == 4 and bool(((boxes >= 0) & (boxes <= 1)).all())
        assert len(target["class_labels"]) == len(boxes)
    optimizer = make_optimizer(model, cfg)
    losses = [train_step(model, optimizer, batch["pixels"], keep, batch["targets"], cfg.clip_grad)["loss"] for _ in range(12)]
    assert losses[-1] < losses[0] - 0.05, losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 9, losses


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_checkpoint_resume_matches_uninterrupted_run(train_images, tmp_path):
    cfg1 = FinetuneConfig(epochs=1, batch_size=2, lr=1e-3, image_size=IMAGE_SIZE)
    cfg2 = FinetuneConfig(epochs=2, batch_size=2, lr=1e-3, image_size=IMAGE_SIZE)

    finetune(tiny_yolos(train_images.coco), train_images, cfg1, tmp_path / "run", progress=False, base="tiny")
    checkpoint = tmp_path / "run" / "checkpoint"
    state = json.loads((checkpoint / "train_state.json").read_text())
    assert state["epoch"] == 1 and state["step"] == 2 and state["config"]["mask_source"] == "gt-boxes"
    assert json.loads((checkpoint / "config.json").read_text())["architectures"] == ["YolosForObjectDetection"]
    assert not list((tmp_path / "run").glob(".checkpoint*"))  # no temp folders left behind
    assert sorted(p.name for p in checkpoint.iterdir() if p.name.startswith("train_state")) == [
        "train_state.json", TRAIN_STATE_FILE]
    # The checkpoint is an ordinary YOLOS directory for --detector, and its optimizer state comes back.
    reloaded = load_yolos_model(checkpoint)
    optimizer = make_optimizer(reloaded, cfg2)
    assert load_train_state(checkpoint, optimizer) == state  # the JSON file is a readable copy of the progress
    assert all(float(s["step"]) == 2 for s in optimizer.state.values()) and len(optimizer.state) > 0

    resumed = finetune(None, train_images, cfg2, tmp_path / "run", resume=True, progress=False)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert {"loss", "loss_ce", "loss_bbox", "loss_giou", "images_per_s", "kept_fraction"} <= set(metrics[0])
    assert json.loads((checkpoint / "train_state.json").read_text())["epoch"] == 2

    straight = finetune(tiny_yolos(train_images.coco), train_images, cfg2, tmp_path / "straight", progress=False)
    expected, got = _weights(straight), _weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    # The optimizer states saved at epoch 2 are identical too, tensor for tensor.
    optimizers = []
    for run in ("straight", "run"):
        optimizers.append(make_optimizer(load_yolos_model(tmp_path / run / "checkpoint"), cfg2))
        assert load_train_state(tmp_path / run / "checkpoint", optimizers[-1])["step"] == 4
    a, b = (o.state_dict() for o in optimizers)
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys() and a["state"]
    for index, state in a["state"].items():
        assert state.keys() == b["state"][index].keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert float(state["step"]) == 4
        for key, tensor in state.items():
            assert torch.equal(tensor, b["state"][index][key]), (index, key)


def test_resume_without_checkpoint_is_a_clear_error(train_images, tmp_path):
    with pytest.raises(CheckpointError, match="no fine-tune checkpoint"):
        finetune(None, train_images, FinetuneConfig(epochs=1, image_size=IMAGE_SIZE), tmp_path, resume=True, progress=False)


def test_cli_missing_detector_exits_2_without_traceback(synthetic_coco, tmp_path, capsys):
    code = main(["finetune", "--detector", str(tmp_path / "no-such-dir"), "--coco-root", str(synthetic_coco),
                 "--output", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: detector directory not found") and "save_pretrained" in err
    assert "Traceback" not in err


def test_bavit_masks_and_cli_end_to_end(train_images, tmp_path, capsys):
    """Keep masks from a (random) BAViT through the CLI; structure only, the weights are untrained."""
    from bavit.core.config import SMALL
    from bavit.core.checkpoint import save_checkpoint
    from bavit.core.model import build_bavit
    from bavit.engine.finetune import bavit_keep_mask
    from bavit.predictor import Predictor
    from bavit.pruning.settings import PruningSettings

    torch.manual_seed(0)
    bavit = build_bavit(SMALL).eval()
    pixels = torch.randn(2, 3, 384, 384)
    predictor = Predictor(bavit=bavit, detector=None, backend="torch", image_size=IMAGE_SIZE)
    everything = bavit_keep_mask(predictor, pixels, FinetuneConfig(threshold=0.0, cca_steps=0))
    assert everything.shape == (2, 8, 8) and bool(everything.all())
    assert bool(bavit_keep_mask(predictor, pixels, FinetuneConfig(keep_ratio=1.0)).all())
    # A real selection is the app's: the Predictor's single-image path on the same probabilities.
    half = bavit_keep_mask(predictor, pixels, FinetuneConfig(keep_ratio=0.5, cca_steps=1))
    for image_pixels, mask in zip(pixels, half):
        prob = predictor.bavit_runner(image_pixels[None])[0]
        expected = predictor.select(prob, PruningSettings(keep_ratio=0.5, cca_steps=1))[0].keep_mask
        assert 0 < int(mask.sum()) < 64 and torch.equal(mask, expected)

    detector_dir = tmp_path / "tiny-yolos"
    tiny_yolos(train_images.coco).save_pretrained(detector_dir)
    bavit_path = save_checkpoint(bavit, tmp_path / "bavit.safetensors")
    coco_root = train_images.images_dir.parent
    code = main(["finetune", "--detector", str(detector_dir), "--coco-root", str(coco_root), "--limit", "2",
                 "--bavit", str(bavit_path), "--keep-ratio", "0.5", "--epochs", "1", "--batch-size", "2",
                 "--image-size", str(IMAGE_SIZE), "--output", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    state = json.loads((tmp_path / "out" / "checkpoint" / "train_state.json").read_text())
    assert state["config"]["mask_source"] == "bavit" and state["config"]["keep_ratio"] == 0.5
    assert state["base"] == str(detector_dir) and state["epoch"] == 1
    metrics = json.loads((tmp_path / "out" / "metrics.jsonl").read_text())
    assert 0.0 < metrics["kept_fraction"] <= 1.0 and metrics["images"] == 2
    assert load_yolos_model(tmp_path / "out" / "checkpoint").config.num_detection_tokens == 10
