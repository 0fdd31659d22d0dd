import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from bavit.core.config import BAViTConfig
from bavit.data.records import coco_records, coco_split
from bavit.core.loss import AccumulativeCrossEntropy
from bavit.core.model import build_bavit, checkpoint_extra, load_checkpoint
from bavit.engine.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def test_one_training_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_bavit(BAViTConfig(depth=2)).train()
    pixels = torch.randn(4, 3, 384, 384)
    labels = (torch.rand(4, 24, 24) > 0.6).long()
    criterion = AccumulativeCrossEntropy()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = criterion(model(pixels), labels)
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = criterion(model(pixels), labels)
    assert after.item() < before.item()


def test_train_writes_checkpoints_metrics_and_resumes(coco_root, tmp_path):
    records = coco_records(*coco_split(coco_root, "train2017"))[:4]
    config = BAViTConfig(img_size=64, depth=1)
    cfg = TrainConfig(epochs=1, batch_size=2, cache_size=96, augment=True)
    train(records, config, cfg, tmp_path, progress=False)
    assert (tmp_path / "last.safetensors").is_file()
    assert load_checkpoint(tmp_path / "last.safetensors").config == config
    extra = checkpoint_extra(tmp_path / "last.safetensors")
    assert extra["epoch"] == 1 and extra["train_images"] == 4 and len(extra["fg_prior"]) == 16
    # Resume for a second epoch: the optimizer state and epoch counter continue.
    cfg.epochs = 2
    train(records, config, cfg, tmp_path, resume=True, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(line["images_per_s"] > 0 and line["images"] == 4 for line in lines)
    assert checkpoint_extra(tmp_path / "last.safetensors")["epoch"] == 2
    assert not list(tmp_path.glob("*.tmp"))


def _cli(*args, timeout=300, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_torchrun_ddp_two_processes(coco_root, tmp_path):
    result = _cli("torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", "-m", "bavit", "train",
                  "--coco-root", str(coco_root), "--limit", "4", "--epochs", "1", "--batch-size", "1",
                  "--img-size", "64", "--depth", "1", "--out", str(tmp_path), "--no-progress", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["world_size"] == 2 and record["images"] == 4  # each process saw 2 of the 4 images
    assert load_checkpoint(tmp_path / "last.safetensors").config.depth == 1


def test_train_cli_bad_dataset_is_a_clear_error(tmp_path):
    result = _cli("bavit", "train", "--coco-root", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "error: annotation file not found" in result.stderr
    assert "Traceback" not in result.stderr
