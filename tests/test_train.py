"""``bavit.engine.train``: training really changes the model, checkpoints and metrics are written, and --resume
ends bit for bit where an uninterrupted run ends. Runs on the synthetic COCO set of conftest (never skips)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bavit.core.config import BAViTConfig
from bavit.core.model import build_bavit, checkpoint_extra, load_checkpoint
from bavit.data.records import coco_records, coco_split
from bavit.engine.state import load_training_state, save_training_state
from bavit.engine.train import TrainConfig, train
from bavit.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = BAViTConfig(img_size=64, depth=1)  # 4x4 token grid


@pytest.fixture(scope="module")
def records(synthetic_coco):
    return coco_records(*coco_split(synthetic_coco, "train2017"))


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_moves_the_weights_and_lowers_the_loss(records, tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=3, lr=2e-3, step_size=10, cache_size=64, augment=False, seed=3)
    torch.manual_seed(cfg.seed)
    initial = build_bavit(CONFIG).state_dict()  # train() builds its model from the same seed
    model = train(records, CONFIG, cfg, tmp_path, progress=False)
    trained = model.state_dict()
    assert initial.keys() == trained.keys()
    moved = [name for name in initial if not torch.equal(initial[name], trained[name])]
    assert "head.weight" in moved and len(moved) > len(initial) // 2, moved
    losses = [m["loss"] for m in _metrics(tmp_path)]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    # The checkpoint on disk is the returned model.
    saved = load_checkpoint(tmp_path / "last.safetensors").state_dict()
    assert all(torch.equal(saved[name], trained[name]) for name in trained)


def _optimizer_state(out: Path) -> dict:
    """The saved training state of ``out`` loaded into a fresh Adam + StepLR over a fresh model."""
    optimizer = torch.optim.Adam(build_bavit(CONFIG).parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    progress = load_training_state(out / "last.train-state.safetensors", optimizer, scheduler)
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "progress": progress}


def test_train_writes_checkpoints_metrics_and_resumes_exactly(records, tmp_path):
    records = records[:5]  # 5 images, batch 2: drop_last leaves 2 steps per epoch
    cfg = TrainConfig(epochs=2, batch_size=2, step_size=1, gamma=0.5, cache_size=80, augment=True, seed=1)
    straight = train(records, CONFIG, cfg, tmp_path / "straight", progress=False)

    first = TrainConfig(**{**cfg.__dict__, "epochs": 1})
    train(records, CONFIG, first, tmp_path / "resumed", progress=False)
    extra = checkpoint_extra(tmp_path / "resumed" / "last.safetensors")
    assert extra["epoch"] == 1 and extra["train_images"] == 5 and len(extra["fg_prior"]) == 16
    assert load_checkpoint(tmp_path / "resumed" / "last.safetensors").config == CONFIG
    resumed = train(records, CONFIG, cfg, tmp_path / "resumed", resume=True, progress=False)

    lines = _metrics(tmp_path / "resumed")
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(line["images_per_s"] > 0 and line["images"] == 4 for line in lines)
    assert [line["lr"] for line in lines] == [cfg.lr * 0.5, cfg.lr * 0.25]  # the scheduler continued
    assert lines == [{**a, "images_per_s": b["images_per_s"], "seconds": b["seconds"]}
                     for a, b in zip(_metrics(tmp_path / "straight"), lines)]
    assert checkpoint_extra(tmp_path / "resumed" / "last.safetensors")["epoch"] == 2

    expected, got = straight.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name

    a, b = _optimizer_state(tmp_path / "straight"), _optimizer_state(tmp_path / "resumed")
    assert a["progress"]["epoch"] == b["progress"]["epoch"] == 2
    assert torch.equal(a["progress"]["rng"], b["progress"]["rng"])
    assert a["scheduler"] == b["scheduler"] and a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys() and len(a["optimizer"]["state"]) > 0
    for index, state in a["optimizer"]["state"].items():
        assert state.keys() == b["optimizer"]["state"][index].keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert float(state["step"]) == 4  # 2 epochs x 2 steps
        for key, tensor in state.items():
            assert torch.equal(tensor, b["optimizer"]["state"][index][key]), (index, key)
    assert not [p.name for p in (tmp_path / "resumed").iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_resume_without_a_run_or_with_mismatched_files_is_a_clear_error(records, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=2, cache_size=64)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        train(records[:2], CONFIG, cfg, tmp_path, resume=True, progress=False)
    train(records[:2], CONFIG, cfg, tmp_path, progress=False)
    state = tmp_path / "last.train-state.safetensors"
    # An interrupt after the model was written but before its training state: the two disagree.
    optimizer = torch.optim.Adam(build_bavit(CONFIG).parameters())
    save_training_state(state, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1), epoch=0)
    cfg.epochs = 2
    with pytest.raises(CheckpointError, match="holds epoch 1 but last.train-state.safetensors epoch 0"):
        train(records[:2], CONFIG, cfg, tmp_path, resume=True, progress=False)
    state.unlink()
    with pytest.raises(CheckpointError, match="no training state at"):
        train(records[:2], CONFIG, cfg, tmp_path, resume=True, progress=False)


def _cli(*args, timeout=300, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_torchrun_ddp_two_processes(synthetic_coco, tmp_path):
    output = tmp_path / "exported" / "bavit.safetensors"
    result = _cli("torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", "-m", "bavit", "train",
                  "--coco-root", str(synthetic_coco), "--limit", "4", "--epochs", "1", "--batch-size", "1",
                  "--img-size", "64", "--depth", "1", "--out", str(tmp_path / "out"), "--output", str(output),
                  "--no-progress", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["world_size"] == 2 and record["images"] == 4  # each process saw 2 of the 4 images
    assert load_checkpoint(tmp_path / "out" / "last.safetensors").config.depth == 1
    # --output: an atomic copy of the final checkpoint, readable by others, no temp file beside it.
    assert output.read_bytes() == (tmp_path / "out" / "last.safetensors").read_bytes()
    assert oct(output.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in output.parent.iterdir()] == ["bavit.safetensors"]


def test_train_cli_bad_dataset_is_a_clear_error(tmp_path):
    result = _cli("bavit", "train", "--coco-root", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "error: annotation file not found" in result.stderr
    assert "Traceback" not in result.stderr
