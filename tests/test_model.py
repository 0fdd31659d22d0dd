import json

import pytest
import torch
from safetensors.torch import save_file

from bavit.core.config import LARGE, SMALL, BAViTConfig
from bavit.core.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from bavit.core.model import build_bavit, grow_from
from bavit.core.pretrained import copy_from_yolos
from bavit.engine.train import init_bavit
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


@pytest.mark.parametrize("stem,convs", [("conv", 5), ("conv-deep", 9), ("lite0", 34), ("lite0-4", 25)])
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


def _doctored(tmp_path, name: str, tensors=None, **metadata):
    """A small valid checkpoint whose safetensors metadata (or tensors) are replaced: ``key=None`` removes a key."""
    from safetensors import safe_open

    torch.manual_seed(0)
    base = save_checkpoint(build_bavit(BAViTConfig(img_size=64, depth=1)), tmp_path / "base.safetensors",
                           extra={"epoch": 1}, calibration={"levels": [0.0]})
    with safe_open(str(base), framework="pt") as handle:
        stored, weights = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    stored = {key: value for key, value in {**stored, **metadata}.items() if value is not None}
    path = tmp_path / name
    save_file({**weights, **(tensors or {})}, str(path), metadata=stored)
    return path


def _config_json(**changes) -> str:
    return json.dumps({**json.loads(BAViTConfig(img_size=64, depth=1).to_json()), **changes})


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


# Broken checkpoints that read_checkpoint refuses with one line (not a RecursionError, a traceback or a model built
# from them). name -> (safetensors metadata changes, what the one-line error says)
BROKEN = {
    "config nested 100000 deep": ({"bavit_config": nested(100_000)}, "nested too deeply"),
    "config nested 500 deep": ({"bavit_config": nested(500)}, "not a JSON object"),
    "config value nested 500 deep": ({"bavit_config": _config_json(name="X").replace('"X"', nested(500, '"x"'))},
                                     "holds a nested value"),
    "extra nested 100000 deep": ({"extra": nested(100_000)}, "'extra' metadata is nested more than 32 levels"),
    "extra nested 500 deep": ({"extra": '{"a": ' * 500 + "1" + "}" * 500}, "'extra' metadata is nested more than"),
    "extra not an object": ({"extra": "[1, 2]"}, "'extra' metadata is not a JSON object"),
    "calibration nested 100000 deep": ({"calibration": nested(100_000)}, "'calibration' metadata is nested more"),
    "calibration value nested 500 deep": ({"calibration": json.dumps({"levels": [0.0], "source": "X"}).replace(
        '"X"', nested(500, ""))}, "'calibration' metadata is nested more"),
    "extra not JSON": ({"extra": "{"}, "'extra' metadata is not valid JSON"),
    "std zero": ({"bavit_config": _config_json(std=[0, 0, 0])}, "std must be 3 numbers"),
    "std 1e-45 (0 in float32)": ({"bavit_config": _config_json(std=[1e-45] * 3)}, "std must be 3 numbers"),
    "std negative": ({"bavit_config": _config_json(std=[0.2, -0.2, 0.2])}, "std must be 3 numbers"),
    "mean NaN": ({"bavit_config": _config_json(mean=[float("nan"), 0.4, 0.4])}, "mean must be 3 numbers"),
    "mean infinite": ({"bavit_config": _config_json(mean=[float("inf"), 0.4, 0.4])}, "mean must be 3 numbers"),
    "mean a 400-digit integer": ({"bavit_config": _config_json(mean=[10**400, 0, 0])}, "mean must be 3 numbers"),
    "std as strings": ({"bavit_config": _config_json(std=["0.2"] * 3)}, "std must be 3 numbers"),
    "fg_frac NaN": ({"bavit_config": _config_json(fg_frac=float("nan"))}, "fg_frac must be a finite number"),
    "name not a string": ({"bavit_config": _config_json(name=5)}, "name must be a string"),
    "config a list": ({"bavit_config": "[]"}, "not a JSON object"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_checkpoint_is_one_checkpoint_error(tmp_path, case):
    from bavit.predictor import Predictor

    changes, message = BROKEN[case]
    path = _doctored(tmp_path, "broken.safetensors", **changes)
    for load in (read_checkpoint, lambda p: Predictor(p, detector=None)):
        with pytest.raises(CheckpointError) as error:
            load(path)
        text = str(error.value)
        assert message in text and str(path) in text and "\n" not in text and len(text) < 500, text


@pytest.mark.parametrize("value,dtype", [(float("nan"), torch.float32), (float("inf"), torch.float32),
                                         (1e300, torch.float64), (float("nan"), torch.float8_e4m3fn),
                                         (1.0, torch.complex64)], ids=["nan", "inf", "1e300-float64", "nan-float8",
                                                                        "complex"])
def test_a_checkpoint_with_weights_that_are_not_finite_is_refused(tmp_path, value, dtype):
    from safetensors import safe_open

    path = _doctored(tmp_path, "ok.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        weight = handle.get_tensor("head.weight").to(torch.float64)
    weight[0, 0] = value
    bad = _doctored(tmp_path, "bad.safetensors", tensors={"head.weight": weight.to(dtype)})
    with pytest.raises(CheckpointError, match=r"weight head.weight holds NaN, infinite or complex values"):
        read_checkpoint(bad)
    assert torch.isfinite(read_checkpoint(path).model.fg_prob(torch.rand(1, 3, 64, 64) * 4 - 2)).all()


def test_a_checkpoint_with_a_negative_batchnorm_variance_is_refused(tmp_path):
    """The conv stem's BatchNorm is folded as weight / sqrt(var + eps): a negative variance is NaN everywhere."""
    model = build_bavit(BAViTConfig(img_size=64, depth=1, stem="conv"))
    path = save_checkpoint(model, tmp_path / "ok.safetensors")
    name = next(key for key in model.state_dict() if key.endswith("running_var"))
    with torch.no_grad():
        model.state_dict()[name].fill_(-1.0)
    bad = save_checkpoint(model, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=rf"weight {name} \(a variance\) holds negative values"):
        read_checkpoint(bad)
    assert read_checkpoint(path).config.stem == "conv"
