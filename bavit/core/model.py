"""BAViT (paper §3.2): a timm ViT-tiny with no class token and a 2-way linear head on every token.

Checkpoints are safetensors files whose metadata holds the :class:`BAViTConfig` as JSON, so loading needs only the
path (nanoGPT-style).
"""
from __future__ import annotations

import dataclasses

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer

from ..errors import CheckpointError, ConfigError
from ..files import atomic_path
from .config import BAViTConfig
from .lite0 import Lite0PatchEmbed

CONFIG_KEY = "bavit_config"
FORMAT_KEY = "format"
FORMAT = "bavit-v1"


class ConvStemPatchEmbed(PatchEmbed):
    """timm's PatchEmbed with its 16x16 projection replaced by four 3x3 stride-2 convolutions and a 1x1 projection.

    ``[B, 3, S, S] -> [B, (S/16)^2, D]``, the same token grid as the patch projection.
    """

    deep = False  # DeepConvStemPatchEmbed: a stride-1 3x3 convolution after each stride-2 one

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        embed_dim = self.proj.out_channels
        widths = (3, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if self.deep:
                layers += [nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(embed_dim, embed_dim, 1))
        self.proj = nn.Sequential(*layers)

    @torch.no_grad()
    def fuse_batchnorm(self) -> None:
        """Fold each eval-mode BatchNorm into the convolution before it (inference only: fewer ops per forward;
        BAViT's time is the "BAViT ms" of ``python -m bavit bench``). Idempotent."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        layers, fused = list(self.proj), []
        while layers:
            layer = layers.pop(0)
            if isinstance(layer, nn.Conv2d) and layers and isinstance(layers[0], nn.BatchNorm2d):
                layer = fuse_conv_bn_eval(layer.eval(), layers.pop(0).eval())
            fused.append(layer)
        self.proj = nn.Sequential(*fused)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # oneDNN runs these small-channel convolutions several times faster in channels-last layout on CPU (BAViT's
        # time: "BAViT ms" of `python -m bavit bench`).
        return super().forward(pixels.contiguous(memory_format=torch.channels_last))


class DeepConvStemPatchEmbed(ConvStemPatchEmbed):
    """:class:`ConvStemPatchEmbed` with a 3x3 stride-1 convolution (+ BatchNorm, ReLU) after each stride-2 one."""

    deep = True


EMBED_LAYERS = {"patch": PatchEmbed, "conv": ConvStemPatchEmbed, "conv-deep": DeepConvStemPatchEmbed,
                "lite0": Lite0PatchEmbed}


class BAViT(nn.Module):
    """Per-token FG/BG classifier.

    ``forward(pixels [B, 3, S, S]) -> logits [B, N, 2]`` with ``N = (S / patch)^2``;
    :meth:`fg_prob` gives the ``[B, S/patch, S/patch]`` FG probability grid.
    """

    def __init__(self, config: BAViTConfig):
        super().__init__()
        self.config = config
        self.vit = VisionTransformer(
            img_size=config.img_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            class_token=False,
            global_pool="",
            num_classes=0,
            drop_path_rate=config.drop_path_rate,
            embed_layer=EMBED_LAYERS[config.stem],
        )
        self.head = nn.Linear(config.embed_dim, config.num_classes)

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S] -> [B, N, D]`` normalised token features."""
        size = tuple(pixels.shape[-2:])
        if size != (self.config.img_size, self.config.img_size):
            raise ConfigError(f"BAViT expects {self.config.img_size}x{self.config.img_size} input, got {size[0]}x{size[1]}")
        return self.vit.forward_features(pixels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S] -> [B, N, 2]`` token logits (index 1 = FG)."""
        return self.head(self.forward_features(pixels))

    def for_inference(self) -> "BAViT":
        """A copy in eval mode with the conv or lite0 stem's BatchNorms folded into its convolutions (same outputs up to
        float rounding). The copy is for prediction only: it cannot be trained or saved as a checkpoint."""
        import copy

        model = copy.deepcopy(self).eval()
        if isinstance(model.vit.patch_embed, (ConvStemPatchEmbed, Lite0PatchEmbed)):
            model.vit.patch_embed.fuse_batchnorm()
        model.inference_only = True
        return model

    @torch.no_grad()
    def fg_prob(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S] -> [B, G, G]`` FG probabilities, ``G = S / patch``."""
        logits = self(pixels)
        grid = self.config.grid_size
        return logits.softmax(-1)[..., 1].reshape(-1, grid, grid)


def build_bavit(config: BAViTConfig) -> BAViT:
    """A BAViT at timm's random initialisation (the offline default). Pretrained starts copy weights into it:
    :func:`grow_from` (a shallower trained BAViT), :func:`bavit.core.pretrained.copy_from_timm` and
    :func:`bavit.core.pretrained.copy_from_yolos`; ``python -m bavit train --init`` names them
    (:func:`bavit.engine.train.init_bavit`)."""
    return BAViT(config)


@torch.no_grad()
def grow_from(model: BAViT, source: BAViT) -> None:
    """Copy a shallower BAViT into ``model``; blocks beyond ``source``'s depth become identities."""
    src, dst = source.config, model.config
    same = ("img_size", "patch_size", "embed_dim", "num_heads", "mlp_ratio", "stem", "num_classes")
    if any(getattr(src, k) != getattr(dst, k) for k in same) or src.depth > dst.depth:
        raise ConfigError(f"cannot grow {src.name} (depth {src.depth}) into {dst.name} (depth {dst.depth}): "
                          f"architectures differ in {[k for k in same if getattr(src, k) != getattr(dst, k)]}")
    model.vit.patch_embed.load_state_dict(source.vit.patch_embed.state_dict())
    model.vit.pos_embed.copy_(source.vit.pos_embed)
    for index, block in enumerate(source.vit.blocks):
        model.vit.blocks[index].load_state_dict(block.state_dict())
    for block in model.vit.blocks[src.depth:]:
        for layer in (block.attn.proj, block.mlp.fc2):
            layer.weight.zero_()
            layer.bias.zero_()
    model.vit.norm.load_state_dict(source.vit.norm.state_dict())
    model.head.load_state_dict(source.head.state_dict())
    model.config = dataclasses.replace(model.config, mean=src.mean, std=src.std)


def save_checkpoint(model: BAViT, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write weights + config to ``path`` atomically (:func:`bavit.files.atomic_path`: a temp file in the same
    folder, renamed onto ``path``; on failure the temp file is removed and an existing ``path`` is untouched).

    Args:
        model: the model (a DDP wrapper's ``.module``).
        path: target ``.safetensors`` file.
        extra: optional JSON-serialisable metadata (epoch, metrics) stored next to the config.
    """
    from safetensors.torch import save_file

    if getattr(model, "inference_only", False):
        raise CheckpointError("this BAViT was prepared with for_inference() (fused layers); save the original model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {FORMAT_KEY: FORMAT, CONFIG_KEY: model.config.to_json()}
    if extra:
        metadata["extra"] = json.dumps(extra, sort_keys=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as tmp:  # mode 0644: a checkpoint is meant to be shared
        save_file(state, str(tmp), metadata=metadata)
    return path


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Metadata of a BAViT safetensors checkpoint; raises :class:`CheckpointError` when it is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    if CONFIG_KEY not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a BAViT checkpoint (no '{CONFIG_KEY}' metadata)")
    return metadata


def update_checkpoint_metadata(path: str | os.PathLike, entries: dict[str, str]) -> None:
    """Add or replace metadata entries of a BAViT checkpoint (e.g. its calibration); the weights are rewritten
    unchanged, atomically. The config and format entries cannot be replaced this way."""
    from safetensors.torch import load_file, save_file

    protected = {CONFIG_KEY, FORMAT_KEY} & set(entries)
    if protected:
        raise CheckpointError(f"metadata {sorted(protected)} is written with the weights (save_checkpoint)")
    metadata = {**read_checkpoint_metadata(path), **entries}
    state = load_file(str(path))
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> BAViT:
    """Load a BAViT from a checkpoint path alone; the architecture comes from the stored config."""
    from safetensors.torch import load_file

    metadata = read_checkpoint_metadata(path)
    try:
        config = BAViTConfig.from_json(metadata[CONFIG_KEY])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: stored config is invalid ({exc})") from None
    model = BAViT(config)
    state = load_file(str(path), device=map_location)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unexpected[:3]}" if unexpected else "",
                f"shape mismatch {wrong[:3]}" if wrong else "",
            )
            if part
        )
        raise CheckpointError(f"{path} does not match its stored config ({config.name}, depth {config.depth}): {detail}")
    model.load_state_dict(state)
    return model.eval()


def checkpoint_extra(path: str | os.PathLike) -> dict:
    """The ``extra`` metadata (epoch, metrics, optimizer state path) stored with a checkpoint, or ``{}``."""
    metadata = read_checkpoint_metadata(path)
    return json.loads(metadata.get("extra", "{}"))


__all__ = [
    "BAViT",
    "build_bavit",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_metadata",
    "update_checkpoint_metadata",
    "grow_from",
    "checkpoint_extra",
]
