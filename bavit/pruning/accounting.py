"""Token accounting (paper Table 2, Eq. 4) and multiply-accumulate counts for BAViT and (pruned) YOLOS.

Tokens are counted as the paper does: *patch* tokens per layer times layers (CLS and detection tokens are not
counted). BAViT-small: 576 x 2 = 1152; dense YOLOS-tiny at 512x512: 1024 x 12 = 12288; pruned YOLOS:
kept patches x 12; total = BAViT + pruned; reduction (%) = (dense - total) / dense x 100.

For a dataset (or a sparsity level), ``kept_patches`` is the mean over images and the pruned token count is
truncated to an integer as the paper does (35% sparsity: 12288 x 0.65 = 7987.2 -> 7987, total 9139,
reduction 25.63%). Because every count is linear in the kept patches, the reduction at the mean equals Eq. 4's
mean of per-image reductions (up to that truncation).

MACs count the matrix multiplications only (linear layers, the two attention matmuls, the convolutions of the
token embedding and the heads); norms, softmax, activations and additions are left out. BAViT's token embedding is
counted as its config's ``stem`` builds it (:func:`embed_macs`): BAViT-small on the EfficientNet-Lite0 stem is
0.73 GMACs of embedding + 0.76 of blocks = 1.49 GMACs, against 0.85 with the paper's 16x16 patch projection.
Checked against torch's ``FlopCounterMode`` on the whole model (``tests/test_accounting.py``), which counts the
attention matmuls only when attention runs as plain matmuls (the math SDPA backend), not the fused CPU kernel.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Iterable, Optional

from ..core.config import SMALL, BAViTConfig
from .detector import YOLOS_SIZE

YOLOS_INPUT = (YOLOS_SIZE, YOLOS_SIZE)  # (height, width) of the pruned pipeline's YOLOS input, paper §3.5


def vit_layer_macs(tokens: float, hidden: int, intermediate: int) -> float:
    """MACs of one pre-norm transformer layer on ``tokens`` tokens.

    ``tokens * (4 D^2 + 2 D I)`` for Q, K, V, output projection and the two MLP linears, plus ``2 tokens^2 D`` for
    ``Q K^T`` and ``attention @ V`` (summed over heads).
    """
    linear = tokens * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = 2 * tokens * tokens * hidden
    return linear + attention


def yolos_macs(config, kept_patches: Optional[float] = None, image_size: tuple[int, int] = YOLOS_INPUT) -> int:
    """MACs of one YOLOS forward at ``image_size`` with ``kept_patches`` patch tokens (None = all, dense).

    Every patch is embedded (pruning happens after the embedding); the encoder runs on
    ``1 + kept_patches + num_detection_tokens`` tokens; the class and box heads (3-layer MLPs) read the
    detection tokens.
    """
    patch, hidden = config.patch_size, config.hidden_size
    patches = (image_size[0] // patch) * (image_size[1] // patch)
    kept = patches if kept_patches is None else kept_patches
    num_det = config.num_detection_tokens
    embed = patches * config.num_channels * patch * patch * hidden
    encoder = config.num_hidden_layers * vit_layer_macs(1 + kept + num_det, hidden, config.intermediate_size)
    heads = num_det * (4 * hidden * hidden + hidden * (config.num_labels + 1) + hidden * 4)
    return int(round(embed + encoder + heads))


def embed_macs(config: BAViTConfig = SMALL) -> int:
    """MACs of BAViT's token embedding as :class:`~bavit.core.model.BAViT` builds it for ``config.stem``: the 16x16
    patch projection (``tokens * 3 * patch^2 * D``), a convolutional stem or EfficientNet-Lite0 to stride 16.

    Counted by torch's ``FlopCounterMode`` (its convolutions) on a weightless copy of the embedding (meta device,
    no arithmetic), so the count follows the module; cached per architecture (the first call of a stem takes up to
    ~0.3 s, building it).
    """
    return _embed_macs(dataclasses.replace(config, depth=1, drop_path_rate=0.0))


@functools.lru_cache(maxsize=32)
def _embed_macs(config: BAViTConfig) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..core.model import BAViT

    with torch.device("meta"):  # this thread only
        embed = BAViT(config).vit.patch_embed.eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            embed(torch.empty(1, 3, config.img_size, config.img_size))
    return counter.get_total_flops() // 2  # a multiply-accumulate is two FLOPs


def bavit_macs(config: BAViTConfig = SMALL) -> int:
    """MACs of one BAViT forward: token embedding (:func:`embed_macs`), ``depth`` layers on all tokens (no CLS),
    2-way head."""
    hidden, patches = config.embed_dim, config.num_tokens
    layers = config.depth * vit_layer_macs(patches, hidden, int(hidden * config.mlp_ratio))
    head = patches * hidden * config.num_classes
    return int(round(embed_macs(config) + layers + head))


@dataclass(frozen=True)
class TokenAccounting:
    """Tokens and MACs of BAViT + pruned YOLOS against dense YOLOS, for one image or a dataset mean.

    Attributes:
        kept_patches: YOLOS patch tokens kept per layer (a mean over images for a dataset).
        yolos_patches: YOLOS patch tokens per layer when dense (1024 at 512x512).
        yolos_layers: YOLOS encoder layers (12).
        bavit_patches: BAViT tokens per layer (576 at 384x384).
        bavit_layers: BAViT depth (2 for BAViT-small).
        dense_macs: one dense YOLOS forward.
        pruned_macs: one pruned YOLOS forward.
        bavit_macs: one BAViT forward.
    """

    kept_patches: float
    yolos_patches: int
    yolos_layers: int
    bavit_patches: int
    bavit_layers: int
    dense_macs: int = 0
    pruned_macs: int = 0
    bavit_macs: int = 0

    @property
    def bavit_tokens(self) -> int:
        return self.bavit_patches * self.bavit_layers

    @property
    def yolos_dense_tokens(self) -> int:
        return self.yolos_patches * self.yolos_layers

    @property
    def yolos_pruned_tokens(self) -> int:
        """``kept_patches x layers``, truncated as in the paper (exact for one image's integer count)."""
        return int(math.floor(self.kept_patches * self.yolos_layers + 1e-6))

    @property
    def total_tokens(self) -> int:
        return self.bavit_tokens + self.yolos_pruned_tokens

    @property
    def reduction_pct(self) -> float:
        """Token reduction in percent (negative when BAViT costs more than pruning saves)."""
        return (self.yolos_dense_tokens - self.total_tokens) / self.yolos_dense_tokens * 100.0

    @property
    def sparsity(self) -> float:
        """Fraction (0..1) of YOLOS patch tokens pruned."""
        return 1.0 - self.kept_patches / self.yolos_patches

    @property
    def pipeline_macs(self) -> int:
        """BAViT + pruned YOLOS."""
        return self.bavit_macs + self.pruned_macs

    @property
    def flop_ratio(self) -> float:
        """Dense YOLOS MACs / (BAViT + pruned YOLOS) MACs: the speed-up arithmetic alone allows."""
        return self.dense_macs / self.pipeline_macs if self.pipeline_macs else float("nan")

    def as_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        for name in ("bavit_tokens", "yolos_dense_tokens", "yolos_pruned_tokens", "total_tokens", "reduction_pct",
                     "sparsity", "pipeline_macs", "flop_ratio"):
            fields[name] = getattr(self, name)
        return fields


def token_accounting(
    kept_patches: float,
    yolos_config=None,
    bavit_config: BAViTConfig = SMALL,
    image_size: tuple[int, int] = YOLOS_INPUT,
) -> TokenAccounting:
    """Accounting for ``kept_patches`` kept YOLOS patch tokens.

    Args:
        kept_patches: kept patch tokens (an image's count, or a mean over images).
        yolos_config: the detector's ``YolosConfig`` (default: the YOLOS-tiny architecture).
        bavit_config: BAViT architecture (its depth gives the BAViT token count; default BAViT-small).
        image_size: YOLOS input ``(height, width)``.
    """
    if yolos_config is None:
        from .detector import yolos_tiny_config

        yolos_config = yolos_tiny_config()
    patches = (image_size[0] // yolos_config.patch_size) * (image_size[1] // yolos_config.patch_size)
    if not 0 <= kept_patches <= patches:
        raise ValueError(f"kept_patches must be in [0, {patches}], got {kept_patches}")
    return TokenAccounting(
        kept_patches=kept_patches,
        yolos_patches=patches,
        yolos_layers=yolos_config.num_hidden_layers,
        bavit_patches=bavit_config.num_tokens,
        bavit_layers=bavit_config.depth,
        dense_macs=yolos_macs(yolos_config, None, image_size),
        pruned_macs=yolos_macs(yolos_config, kept_patches, image_size),
        bavit_macs=bavit_macs(bavit_config),
    )


def accounting_at_sparsity(sparsity: float, yolos_config=None, bavit_config: BAViTConfig = SMALL,
                           image_size: tuple[int, int] = YOLOS_INPUT) -> TokenAccounting:
    """Accounting when a fraction ``sparsity`` (0..1) of the YOLOS patches is pruned (a Table 2 row)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity is a fraction in [0, 1], got {sparsity}")
    probe = token_accounting(0, yolos_config, bavit_config, image_size)
    return token_accounting(probe.yolos_patches * (1.0 - sparsity), yolos_config, bavit_config, image_size)


def mean_accounting(items: Iterable[TokenAccounting]) -> TokenAccounting:
    """Dataset-level accounting (Eq. 4): mean kept patches and mean MACs over per-image accountings."""
    items = list(items)
    if not items:
        raise ValueError("mean_accounting needs at least one image")
    count = len(items)
    return dataclasses.replace(
        items[0],
        kept_patches=sum(item.kept_patches for item in items) / count,
        pruned_macs=int(round(sum(item.pruned_macs for item in items) / count)),
    )


__all__ = [
    "TokenAccounting",
    "token_accounting",
    "accounting_at_sparsity",
    "mean_accounting",
    "yolos_macs",
    "bavit_macs",
    "embed_macs",
    "vit_layer_macs",
]
