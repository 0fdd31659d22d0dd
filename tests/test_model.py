import json

import pytest
import torch
from safetensors.torch import save_file

from bavit.core.config import LARGE, SMALL, BAViTConfig
from bavit.core.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from bavit.core.model import build_bavit, grow_from
from bavit.core.pretrained import copy_from_yolos
from bavit.engine.train_parts import init_bavit
from bavit.errors import CheckpointError, ConfigError


@pytest.mark.parametrize("config", [SMALL, LARGE, BAViTConfig(stem="conv")], ids=["small", "large", "conv-stem"])
def test_shapes(config):
    model = build_bavit(config).eval()
    pixels = torch.randn(2, 3, 384, 384)
    logits = model(pixels)
    assert logits.shape == (2, 576, 2)
    probs = model.fg_prob(pixels)
    assert probs.shape == (2, 24, 24)
    assert torch.allclose(probs, logits.softmax(-1)[..., 1].reshape(2, 24, 24))
    assert len(model.vit.blocks) == config.depth
    assert model.vit.cls_token is None and model.vit.num_prefix_tokens == 0
    assert model.vit.embed_dim == 192 and model.vit.blocks[0].attn.num_heads == 3


def test_other_grid_sizes():
    model = build_bavit(BAViTConfig(img_size=64, depth=1)).eval()
    assert model.fg_prob(torch.randn(1, 3, 64, 64)).shape == (1, 4, 4)


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ConfigError, match="not a multiple of the patch size"):
        BAViTConfig(img_size=390)
    model = build_bavit(SMALL)
    with pytest.raises(ConfigError, match="expects 384x384"):
        model(torch.randn(1, 3, 320, 320))


def test_checkpoint_round_trip(tmp_path):
    model = build_bavit(BAViTConfig(depth=3, stem="conv", name="custom")).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", extra={"epoch": 7})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp files left behind
    loaded = load_checkpoint(path)  # the path alone
    assert loaded.config == model.config
    pixels = torch.randn(1, 3, 384, 384)
    assert torch.equal(loaded(pixels), model(pixels))
    assert read_checkpoint(path).extra == {"epoch": 7}


def test_read_checkpoint_gets_weights_config_extra_and_calibration_from_one_open(tmp_path, monkeypatch):
    import safetensors
    import safetensors.torch

    model = build_bavit(BAViTConfig(img_size=64, depth=1)).eval()
    calibration = {"levels": [0.0, 0.5], "grid": 4}  # stored as it is: bavit.pruning.calibration interprets it
    path = save_checkpoint(model, tmp_path / "m.safetensors", extra={"epoch": 2}, calibration=calibration)
    opened, real = [], safetensors.safe_open

    def counting(filename, *args, **kwargs):
        opened.append(filename)
        return real(filename, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("a second read of the file")

    monkeypatch.setattr(safetensors, "safe_open", counting)
    monkeypatch.setattr(safetensors.torch, "load_file", forbidden)
    saved = read_checkpoint(path)
    assert opened == [str(path)]
    assert (saved.path, saved.config, saved.extra, saved.calibration) == (path, model.config, {"epoch": 2}, calibration)
    assert not saved.model.training
    assert all(torch.equal(a, b) for a, b in zip(saved.model.state_dict().values(), model.state_dict().values()))


def test_checkpoint_of_another_architecture(tmp_path):
    model = build_bavit(SMALL)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    # Same weights, but the stored config claims 10 layers: missing blocks.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    config = json.loads(metadata["bavit_config"])
    config["depth"] = 10
    save_file(tensors, str(tmp_path / "lie.safetensors"), metadata={**metadata, "bavit_config": json.dumps(config)})
    with pytest.raises(CheckpointError, match="does not match its stored config"):
        load_checkpoint(tmp_path / "lie.safetensors")
    # A safetensors file that is not ours at all.
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a BAViT checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "corrupt.safetensors")
    with pytest.raises(CheckpointError, match="no BAViT checkpoint at"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_grow_from_shallower_model_starts_identical(tmp_path):
    small = build_bavit(BAViTConfig(depth=2)).eval()
    path = save_checkpoint(small, tmp_path / "small.safetensors")
    large = init_bavit(BAViTConfig(depth=4), init=f"bavit:{path}").eval()
    pixels = torch.randn(1, 3, 384, 384)
    assert torch.allclose(large(pixels), small(pixels), atol=1e-6)
    with pytest.raises(ConfigError, match="cannot grow"):
        grow_from(build_bavit(BAViTConfig(depth=1)), small)


def test_init_from_yolos_layers(tmp_path):
    from transformers import YolosConfig, YolosForObjectDetection

    yolos_config = YolosConfig(hidden_size=192, num_hidden_layers=3, num_attention_heads=3, intermediate_size=768,
                               image_size=[64, 96], num_detection_tokens=5, num_labels=3)
    torch.manual_seed(0)
    YolosForObjectDetection(yolos_config).save_pretrained(tmp_path / "yolos")
    model = init_bavit(BAViTConfig(depth=2), init=f"yolos:{tmp_path / 'yolos'}").eval()  # the --init path
    yolos = YolosForObjectDetection.from_pretrained(tmp_path / "yolos").eval()
    copied = build_bavit(BAViTConfig(depth=2)).eval()
    copy_from_yolos(copied, yolos, "tiny")  # the core function on an already loaded model
    copied_state, init_state = copied.state_dict(), model.state_dict()
    assert all(torch.equal(copied_state[k], init_state[k]) for k in init_state if k.startswith("vit."))
    with pytest.raises(ConfigError, match="stem='patch'"):
        copy_from_yolos(build_bavit(BAViTConfig(depth=2, stem="conv")), yolos, "tiny")
    with pytest.raises(ConfigError, match="fewer than depth"):
        copy_from_yolos(build_bavit(BAViTConfig(depth=4)), yolos, "tiny")
    layer, block = yolos.vit.encoder.layer[1], model.vit.blocks[1]
    tokens = torch.randn(1, 20, 192)
    # timm's LayerNorm eps is 1e-6, YOLOS' 1e-12: the same layer up to that.
    assert torch.allclose(block(tokens), layer(tokens)[0], atol=1e-4)
    assert torch.equal(model.vit.patch_embed.proj.weight, yolos.vit.embeddings.patch_embeddings.projection.weight)


def test_timm_init_fails_clearly_offline():
    from bavit.errors import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="vit_tiny_patch16_384"):
        init_bavit(SMALL, init="timm:vit_tiny_patch16_384")


def test_unknown_init_is_rejected():
    for init in ("imagenet", "timm:", "yolos"):
        with pytest.raises(ConfigError, match="init must be"):
            init_bavit(SMALL, init=init)


@pytest.mark.parametrize("stem,convs", [("conv", 5), ("conv-deep", 9), ("lite0", 34)])
def test_for_inference_copy_matches_and_cannot_be_saved(tmp_path, stem, convs):
    model = build_bavit(BAViTConfig(stem=stem)).eval()
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.vit.patch_embed.modules()) == convs
    # Give the BatchNorms non-trivial statistics so folding them is really tested.
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 384, 384) * 3 + 1)
    model.eval()
    fast = model.for_inference()
    pixels = torch.randn(1, 3, 384, 384)
    assert torch.allclose(fast(pixels), model(pixels), atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    with pytest.raises(CheckpointError, match="for_inference"):
        save_checkpoint(fast, tmp_path / "x.safetensors")


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "interrupt"])
def test_failing_save_leaves_no_temp_file_and_the_old_checkpoint(tmp_path, monkeypatch, error):
    import safetensors.torch

    model = build_bavit(BAViTConfig(img_size=64, depth=1)).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", extra={"epoch": 1})
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise error

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(type(error)):
        save_checkpoint(build_bavit(BAViTConfig(img_size=64, depth=1)), path, extra={"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert path.read_bytes() == before and read_checkpoint(path).extra == {"epoch": 1}


def test_module_exports_only_what_it_defines():
    import bavit.core.model as module

    for name in module.__all__:
        assert getattr(module, name).__module__ == module.__name__, name


def test_presets_are_immutable_and_loaders_leave_them_alone(tmp_path):
    import dataclasses

    from bavit.core.config import PRESETS

    with pytest.raises(dataclasses.FrozenInstanceError):
        SMALL.depth = 3
    with pytest.raises(TypeError):
        PRESETS["small"] = LARGE  # the registry of presets is read-only too
    assert PRESETS["small"] is SMALL and PRESETS["large"] is LARGE
    before = (SMALL, LARGE, SMALL.mean, SMALL.std)
    small = build_bavit(dataclasses.replace(SMALL, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6)))
    path = save_checkpoint(small, tmp_path / "small.safetensors")
    large = init_bavit(LARGE, init=f"bavit:{path}")  # grow_from takes the source's normalisation
    assert large.config.mean == (0.1, 0.2, 0.3) and large.config.std == (0.4, 0.5, 0.6)
    assert large.config.depth == 10 and (SMALL, LARGE, SMALL.mean, SMALL.std) == before
    assert LARGE.mean == BAViTConfig().mean  # the preset itself was not changed
    assert hash(SMALL) == hash(BAViTConfig(depth=2, name="bavit-small"))


def test_random_yolos_tiny_leaves_the_global_generator_alone():
    from bavit.pruning.detector import random_yolos_tiny

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = random_yolos_tiny(seed=0, num_hidden_layers=1)
    assert torch.equal(torch.rand(3), expected)  # as if it had not run
    second = random_yolos_tiny(seed=0, num_hidden_layers=1)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
