"""Copy pretrained transformer weights into a BAViT: a timm ViT by name, or the first k layers of a loaded YOLOS."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..errors import ConfigError, WeightsUnavailableError


def _resize_patch_pos(pos: torch.Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> torch.Tensor:
    """``[1, h*w, D] -> [1, H*W, D]`` bicubic resize of patch position embeddings."""
    if tuple(old_hw) == tuple(new_hw):
        return pos
    dim = pos.shape[-1]
    grid = pos.reshape(1, old_hw[0], old_hw[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_hw, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], dim)


def _check_width(model, dim: int, heads: int | None, source: str) -> None:
    cfg = model.config
    if dim != cfg.embed_dim or (heads is not None and heads != cfg.num_heads):
        raise ConfigError(f"{source} has width {dim}/{heads} heads; BAViT is {cfg.embed_dim}/{cfg.num_heads}")


@torch.no_grad()
def copy_from_timm(model, name: str) -> None:
    """Initialise from a pretrained timm ViT (hub download; fails clearly offline)."""
    import timm

    if model.config.stem != "patch":
        raise ConfigError("copying a timm ViT's 16x16 patch projection needs stem='patch'")
    try:
        source = timm.create_model(name, pretrained=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"could not load pretrained timm weights {name!r} ({type(exc).__name__}: {exc}). "
            "They come from the Hugging Face hub; connect to it or use init 'random'."
        ) from None
    _check_width(model, source.embed_dim, source.blocks[0].attn.num_heads, name)
    if len(source.blocks) < model.config.depth:
        raise ConfigError(f"{name} has {len(source.blocks)} blocks, fewer than depth {model.config.depth}")
    vit = model.vit
    vit.patch_embed.load_state_dict(source.patch_embed.state_dict())
    pos = source.pos_embed[:, source.num_prefix_tokens :] if not getattr(source, "no_embed_class", False) else source.pos_embed
    vit.pos_embed.copy_(_resize_patch_pos(pos, source.patch_embed.grid_size, vit.patch_embed.grid_size))
    for index in range(model.config.depth):
        vit.blocks[index].load_state_dict(source.blocks[index].state_dict())
    vit.norm.load_state_dict(source.norm.state_dict())
    data_cfg = getattr(source, "pretrained_cfg", {}) or {}
    if "mean" in data_cfg and "std" in data_cfg:
        model.config = dataclasses.replace(model.config, mean=tuple(data_cfg["mean"]), std=tuple(data_cfg["std"]))


@torch.no_grad()
def copy_from_yolos(model, yolos, source: str = "YOLOS") -> None:
    """Initialise from the patch embedding and first ``depth`` encoder layers of a loaded YOLOS.

    Args:
        model: the BAViT (``stem="patch"``).
        yolos: a transformers ``YolosForObjectDetection`` or ``YolosModel``.
        source: its name, for error messages.
    """
    cfg = yolos.config
    if model.config.stem != "patch":
        raise ConfigError("copying YOLOS' 16x16 patch projection needs stem='patch'")
    _check_width(model, cfg.hidden_size, cfg.num_attention_heads, source)
    if cfg.patch_size != model.config.patch_size:
        raise ConfigError(f"{source} uses {cfg.patch_size}px patches, BAViT {model.config.patch_size}px")
    if cfg.num_hidden_layers < model.config.depth:
        raise ConfigError(f"{source} has {cfg.num_hidden_layers} layers, fewer than depth {model.config.depth}")
    backbone = yolos.vit if hasattr(yolos, "vit") else yolos
    vit = model.vit
    emb = backbone.embeddings
    vit.patch_embed.proj.load_state_dict(emb.patch_embeddings.projection.state_dict())
    height, width = cfg.image_size
    old_hw = (height // cfg.patch_size, width // cfg.patch_size)
    patch_pos = emb.position_embeddings[:, 1 : 1 + old_hw[0] * old_hw[1]]
    vit.pos_embed.copy_(_resize_patch_pos(patch_pos, old_hw, vit.patch_embed.grid_size))
    for index in range(model.config.depth):
        layer = backbone.encoder.layer[index]
        block = vit.blocks[index]
        att = layer.attention.attention
        block.attn.qkv.weight.copy_(torch.cat([att.query.weight, att.key.weight, att.value.weight]))
        block.attn.qkv.bias.copy_(torch.cat([att.query.bias, att.key.bias, att.value.bias]))
        block.attn.proj.load_state_dict(layer.attention.output.dense.state_dict())
        block.norm1.load_state_dict(layer.layernorm_before.state_dict())
        block.norm2.load_state_dict(layer.layernorm_after.state_dict())
        block.mlp.fc1.load_state_dict(layer.intermediate.dense.state_dict())
        block.mlp.fc2.load_state_dict(layer.output.dense.state_dict())
    vit.norm.load_state_dict(backbone.layernorm.state_dict())
