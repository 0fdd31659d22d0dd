"""``bavit.engine.train``: training really changes the model, checkpoints and metrics are written, and --resume
ends bit for bit where an uninterrupted run ends. Runs on the synthetic COCO set of conftest (never skips)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bavit.core.checkpoint import load_checkpoint, read_checkpoint
from bavit.core.config import BAViTConfig
from bavit.core.model import bavit_pixels, build_bavit
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
    extra = read_checkpoint(tmp_path / "resumed" / "last.safetensors").extra
    assert extra["epoch"] == 1 and extra["train_images"] == 5 and len(extra["fg_prior"]) == 16
    assert load_checkpoint(tmp_path / "resumed" / "last.safetensors").config == CONFIG
    resumed = train(records, CONFIG, cfg, tmp_path / "resumed", resume=True, progress=False)

    lines = _metrics(tmp_path / "resumed")
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(line["images_per_s"] > 0 and line["images"] == 4 for line in lines)
    assert [line["lr"] for line in lines] == [cfg.lr * 0.5, cfg.lr * 0.25]  # the scheduler continued
    assert lines == [{**a, "images_per_s": b["images_per_s"], "seconds": b["seconds"]}
                     for a, b in zip(_metrics(tmp_path / "straight"), lines)]
    assert read_checkpoint(tmp_path / "resumed" / "last.safetensors").extra["epoch"] == 2

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


def test_resume_rewrites_a_lagging_checkpoint_from_the_state_and_refuses_what_it_cannot_resume(records, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=2, cache_size=64)
    with pytest.raises(CheckpointError, match="no training state at"):
        train(records[:2], CONFIG, cfg, tmp_path, resume=True, progress=False)
    trained = train(records[:2], CONFIG, cfg, tmp_path, progress=False).state_dict()
    last, state = tmp_path / "last.safetensors", tmp_path / "last.train-state.safetensors"
    extra = read_checkpoint(last).extra
    # A kill after the state was written but before the model: the state alone resumes and rewrites the model.
    last.unlink()
    train(records[:2], CONFIG, cfg, tmp_path, resume=True, progress=False)  # epoch 1 of 1: nothing left to train
    assert read_checkpoint(last).extra == extra and load_checkpoint(last).config == CONFIG
    assert all(torch.equal(tensor, trained[name]) for name, tensor in load_checkpoint(last).state_dict().items())
    # A training state without the model weights in it (as save_training_state alone writes one) cannot resume.
    optimizer = torch.optim.Adam(build_bavit(CONFIG).parameters())
    save_training_state(state, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1), epoch=1)
    with pytest.raises(CheckpointError, match="holds no model weights"):
        train(records[:2], CONFIG, cfg, tmp_path, resume=True, progress=False)
    state.unlink()
    with pytest.raises(CheckpointError, match="no training state at"):
        train(records[:2], CONFIG, cfg, tmp_path, resume=True, progress=False)


def _cli(*args, timeout=300, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
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


@pytest.mark.slow
def test_train_cli_bad_dataset_is_a_clear_error(tmp_path):
    result = _cli("bavit", "train", "--coco-root", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "error: annotation file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_block_mask_hides_whole_blocks_and_hide_patches_zeroes_exactly_them():
    import numpy as np

    from bavit.engine.train import block_mask, hide_patches

    mask = block_mask(3, 4, 0.5, np.random.default_rng(0))  # 4x4 tokens = 2x2 blocks of 2x2; 2 blocks hidden
    assert mask.shape == (3, 4, 4) and mask.dtype == torch.bool
    assert mask.flatten(1).sum(1).tolist() == [8, 8, 8]
    blocks = mask.reshape(3, 2, 2, 2, 2)  # [B, block row, in-block row, block col, in-block col]
    assert torch.equal(blocks.all(2).all(3), blocks.any(2).any(3))  # every block wholly in or out
    assert torch.equal(mask, block_mask(3, 4, 0.5, np.random.default_rng(0)))  # the rng decides it
    pixels = torch.rand(3, 3, 64, 64) + 1.0  # no zeros of its own
    hidden = hide_patches(pixels, mask)
    zero = (hidden == 0).all(1)  # [B, 64, 64]
    assert torch.equal(zero, mask.repeat_interleave(16, 1).repeat_interleave(16, 2))
    assert torch.equal(hidden[~zero[:, None].expand_as(hidden)], pixels[~zero[:, None].expand_as(hidden)])


def test_mim_pretraining_uses_no_labels_learns_and_resumes_exactly(records, tmp_path):
    from bavit.engine.train import init_bavit

    records = records[:4]
    cfg = TrainConfig(epochs=3, batch_size=2, lr=2e-3, step_size=10, cache_size=80, seed=2, objective="mim",
                      mask_ratio=0.5)
    torch.manual_seed(cfg.seed)
    initial = build_bavit(CONFIG).state_dict()
    straight = train(records, CONFIG, cfg, tmp_path / "straight", progress=False)
    lines = _metrics(tmp_path / "straight")
    assert [line["train_token_accuracy"] for line in lines] == [None, None, None]  # no labels were read
    assert lines[-1]["loss"] < lines[0]["loss"], lines
    trained = straight.state_dict()
    # The 2-class head gets no gradient from masked pixels; the stem and the blocks learn.
    assert torch.equal(trained["head.weight"], initial["head.weight"])
    assert not torch.equal(trained["vit.blocks.0.mlp.fc1.weight"], initial["vit.blocks.0.mlp.fc1.weight"])
    # Resume continues with the decoder and masks an uninterrupted run used: the same weights at the end.
    train(records, CONFIG, TrainConfig(**{**cfg.__dict__, "epochs": 2}), tmp_path / "resumed", progress=False)
    resumed = train(records, CONFIG, cfg, tmp_path / "resumed", resume=True, progress=False)
    assert all(torch.equal(resumed.state_dict()[name], tensor) for name, tensor in trained.items())
    assert [line["loss"] for line in _metrics(tmp_path / "resumed")] == [line["loss"] for line in lines]
    # --init bavit:PRE starts a label run from the pre-trained stem and blocks.
    started = init_bavit(CONFIG, f"bavit:{tmp_path / 'straight' / 'last.safetensors'}").state_dict()
    assert all(torch.equal(started[name], trained[name]) for name in trained if name.startswith("vit."))


def test_distillation_pulls_the_student_to_its_teacher_and_passes_on_its_images(records, tmp_path):
    from bavit.engine.train import teacher_prob
    from bavit.errors import ConfigError

    teacher_cfg = TrainConfig(epochs=3, batch_size=2, lr=3e-3, step_size=10, cache_size=64, augment=False, seed=4)
    teacher_path = tmp_path / "teacher" / "last.safetensors"
    teacher = train(records[:3], CONFIG, teacher_cfg, teacher_path.parent, progress=False)
    student_records = records[3:6]
    cfg = TrainConfig(epochs=6, batch_size=3, lr=3e-3, step_size=10, cache_size=64, augment=False, seed=5,
                      teachers=(str(teacher_path),), distill_weight=1.0)
    torch.manual_seed(cfg.seed)
    before = build_bavit(CONFIG).eval()
    student = train(student_records, CONFIG, cfg, tmp_path / "student", progress=False)
    pixels = torch.stack([bavit_pixels(record.load_image(), CONFIG) for record in student_records])
    target = teacher_prob([teacher.eval()], pixels)
    with torch.no_grad():
        gap_before = (before.fg_prob(pixels) - target).abs().mean()
        gap_after = (student.fg_prob(pixels) - target).abs().mean()
    torch.manual_seed(cfg.seed)
    labels_only = train(student_records, CONFIG, TrainConfig(**{**cfg.__dict__, "distill_weight": 0.0}),
                        tmp_path / "labels-only", progress=False)
    with torch.no_grad():
        gap_labels_only = (labels_only.fg_prob(pixels) - target).abs().mean()
    assert gap_after < 0.5 * gap_before and gap_after < gap_labels_only, (gap_before, gap_after, gap_labels_only)
    extra = read_checkpoint(tmp_path / "student" / "last.safetensors").extra
    assert extra["train"]["teachers"] == [str(teacher_path)] and extra["train"]["distill_weight"] == 1.0
    ids = [r.image_id for r in records]
    assert extra["train_image_ids"] == ids[3:6] + ids[:3]  # calibrate must refuse the teacher's images too
    with pytest.raises(ConfigError, match="distill-weight is a fraction"):
        train(student_records, CONFIG, TrainConfig(epochs=1, teachers=(str(teacher_path),), distill_weight=1.5),
              tmp_path / "bad1", progress=False)
    with pytest.raises(ConfigError, match="the student reads 96 px"):
        train(student_records, BAViTConfig(img_size=96, depth=1), TrainConfig(epochs=1, teachers=(str(teacher_path),)),
              tmp_path / "bad2", progress=False)
    with pytest.raises(ConfigError, match="objective mim takes no teachers"):
        train(student_records, CONFIG, TrainConfig(epochs=1, teachers=(str(teacher_path),), objective="mim"),
              tmp_path / "bad3", progress=False)


def test_the_train_command_builds_the_asked_architecture(synthetic_coco, tmp_path, capsys):
    from bavit.cli import main

    out = tmp_path / "out"
    code = main(["train", "--coco-root", str(synthetic_coco), "--limit", "2", "--epochs", "1", "--batch-size", "2",
                 "--img-size", "64", "--depth", "1", "--embed-dim", "32", "--heads", "2", "--out", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    config = load_checkpoint(out / "last.safetensors").config
    assert (config.img_size, config.depth, config.embed_dim, config.num_heads, config.stem) == (64, 1, 32, 2, "patch")
    assert config.grid_size == 4 and config.mlp_ratio == 4.0
    code = main(["train", "--coco-root", str(synthetic_coco), "--limit", "2", "--epochs", "1", "--embed-dim", "32",
                 "--heads", "3", "--out", str(tmp_path / "bad"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "embed_dim 32 is not divisible by num_heads 3" in err and "Traceback" not in err
