"""The one config dataclass of a BAViT model; it is stored inside every checkpoint."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from ..errors import ConfigError

STEMS = ("patch", "conv", "conv-deep")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BAViTConfig:
    """Architecture and preprocessing of a BAViT token classifier.

    ``depth=2`` is the paper's BAViT-small, ``depth=10`` BAViT-large; both are ViT-tiny width (192, 3 heads).
    """

    img_size: int = 384
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 2
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_classes: int = 2
    drop_path_rate: float = 0.0
    # Token embedding: "patch" is the paper's (and timm's) 16x16 linear patch projection; "conv" is a 4-layer
    # stride-2 convolutional stem (Xiao et al. 2021, "Early convolutions help transformers see better") that gives
    # the from-scratch model a locality bias. Both produce the same 24x24 token grid.
    # "conv-deep" adds a 3x3 stride-1 convolution after each stride-2 one (twice the stem's depth).
    stem: str = "patch"
    # Pixel normalisation applied after the square resize (ImageNet statistics, as YOLOS and DeiT use).
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Label rule the model was trained with (recorded for the reader; evaluation re-derives labels).
    fg_frac: float = 0.10
    name: str = field(default="bavit")

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if self.patch_size <= 0 or self.img_size <= 0:
            raise ConfigError("img_size and patch_size must be positive")
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"input size {self.img_size} is not a multiple of the patch size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.stem not in STEMS:
            raise ConfigError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.stem != "patch" and self.patch_size != 16:
            raise ConfigError("the conv stem is built for 16x16 patches")
        if self.depth < 1:
            raise ConfigError(f"depth must be >= 1, got {self.depth}")

    @property
    def grid_size(self) -> int:
        """Tokens per side (384 / 16 = 24)."""
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens per image (576 at 384 / 16)."""
        return self.grid_size**2

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "BAViTConfig":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown BAViT config keys {sorted(unknown)}")
        return cls(**data)


SMALL = BAViTConfig(depth=2, name="bavit-small")
LARGE = BAViTConfig(depth=10, name="bavit-large")
PRESETS = {"small": SMALL, "large": LARGE}
