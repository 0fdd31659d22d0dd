"""BAViT (paper §3.2): a timm ViT-tiny with no class token and a 2-way linear head on every token.

Its checkpoints (weights + config, loadable by path alone) are :mod:`bavit.core.checkpoint`'s.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer

from ..errors import ConfigError
from ..imageio import to_tensor
from .config import BAViTConfig
from .lite0 import Lite0PatchEmbed, Lite0Stage4PatchEmbed


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
                "lite0": Lite0PatchEmbed, "lite0-4": Lite0Stage4PatchEmbed}


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


def bavit_pixels(image, config: BAViTConfig) -> torch.Tensor:
    """BAViT's input for an 8-bit RGB image at any size (PIL, or a ``uint8 [3, H, W]`` tensor): ``float32 [3, S, S]``,
    the paper's square resize to ``config.img_size`` then normalised with the config's ``mean`` / ``std``
    (:func:`bavit.imageio.to_tensor`). The one preprocessing of BAViT: the Predictor (app, CLI, evaluation,
    calibration), fine-tuning, and training, where it is the last step of every view, after the augmentation
    (:mod:`bavit.data.augment`)."""
    return to_tensor(image, config.img_size, config.mean, config.std)


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


__all__ = ["BAViT", "bavit_pixels", "build_bavit", "grow_from"]
