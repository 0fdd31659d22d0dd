"""The one config dataclass of a BAViT model; it is stored inside every checkpoint."""
from __future__ import annotations

import dataclasses
import json
import math
import reprlib
from types import MappingProxyType
from typing import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError
from .labels import FG_FRAC

STEMS = ("patch", "conv", "conv-deep", "lite0", "lite0-4")
LITE0_STEMS = ("lite0", "lite0-4")  # the ImageNet-pretrained EfficientNet-Lite0 trunks (bavit.core.lite0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_MEAN = (127.0 / 255.0,) * 3  # EfficientNet-Lite's (x - 127) / 128 on 0-255 pixels, written for 0-1 pixels
LITE0_STD = (128.0 / 255.0,) * 3


def stem_normalisation(stem: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` that a stem's pretrained weights expect: Lite's for the lite0 stems, ImageNet's otherwise."""
    return (LITE0_MEAN, LITE0_STD) if stem in LITE0_STEMS else (IMAGENET_MEAN, IMAGENET_STD)

# Bounds on what a config may ask for -- a checkpoint's stored one included, so that a corrupt or foreign config
# fails here in one line instead of allocating gigabytes. Generous for a token classifier: ViT-Base (768 wide, 12
# deep, 86M parameters) fits; BAViT-large is 4.4M.
INT_BOUNDS = {"img_size": (1, 2048), "patch_size": (1, 64), "embed_dim": (1, 2048), "depth": (1, 48),
              "num_heads": (1, 64), "num_classes": (1, 1000)}
MAX_MLP_RATIO = 16.0
MAX_TOKENS = 64 * 64  # tokens per image; attention memory grows with its square
MAX_PARAMETERS = 100_000_000  # 400 MB of float32 weights
# EfficientNet-Lite0 to stride 16 (bavit.core.lite0), to within 1%: its trunk parameters and output channels
LITE0_TRUNK = {"lite0": (700_000, 112), "lite0-4": (254_000, 80)}
# Pixel normalisation (x - mean) / std on pixels in [0, 1]: finite, std > 0, and bounded so that float32 pixels
# stay finite (std 1e-45 is > 0 but rounds to 0 in float32: every probability NaN).
MEAN_BOUND = 1000.0  # |mean| <= it
STD_BOUNDS = (1e-3, 1000.0)
MAX_NAME = 200  # characters in a config's name
_REPR = reprlib.Repr()  # values in messages: short, and safe for any nesting
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def _finite(value) -> bool:
    """A real number (not a bool) that float32 maths can use: finite as a float (a 400-digit int is not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


@dataclass(frozen=True)
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
    # "conv-deep" adds a 3x3 stride-1 convolution after each stride-2 one (twice the stem's depth). "lite0" is
    # EfficientNet-Lite0 to stride 16 plus a 1x1 projection (bavit.core.lite0), ImageNet-pretrained when trained
    # with --init lite0:package (its weights expect mean LITE0_MEAN and std LITE0_STD); "lite0-4" stops a stage
    # earlier (blocks[:4], 80 channels: the same grid, about half the trunk's time).
    stem: str = "patch"
    # Pixel normalisation applied after the square resize (ImageNet statistics, as YOLOS and DeiT use).
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Label rule the model was trained with (recorded for the reader; evaluation re-derives labels).
    fg_frac: float = FG_FRAC
    name: str = field(default="bavit")

    def __post_init__(self) -> None:
        self._check_bounds()
        # frozen: the presets are shared, so nobody may change them; a changed config is dataclasses.replace(...)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"input size {self.img_size} is not a multiple of the patch size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.stem not in STEMS:
            raise ConfigError(f"stem must be one of {STEMS}, got {_REPR.repr(self.stem)}")
        if self.stem != "patch" and self.patch_size != 16:
            raise ConfigError(f"the {self.stem} stem is built for 16x16 patches (patch_size 16)")
        parameters = self.parameter_estimate()
        if parameters > MAX_PARAMETERS:
            raise ConfigError(
                f"this config asks for a model of about {parameters / 1e6:,.0f}M parameters "
                f"({4 * parameters / 1e6:,.0f} MB in float32; embed_dim {self.embed_dim}, depth {self.depth}, "
                f"mlp_ratio {self.mlp_ratio}); the limit is {MAX_PARAMETERS / 1e6:.0f}M "
                f"({4 * MAX_PARAMETERS / 1e6:.0f} MB)"
            )

    def _check_bounds(self) -> None:
        """Types and sizes, before anything is computed from them (see ``INT_BOUNDS`` and the limits above)."""
        for name, (low, high) in INT_BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an integer, got {_REPR.repr(value)}")
            if not low <= value <= high:
                raise ConfigError(f"{name} must be in [{low}, {high}], got {value} (sizes are bounded so that no "
                                  f"config asks for a model over {MAX_PARAMETERS / 1e6:.0f}M parameters)")
        for name in ("mlp_ratio", "drop_path_rate", "fg_frac"):
            if not _finite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, got {_REPR.repr(getattr(self, name))}")
        if not 0 < self.mlp_ratio <= MAX_MLP_RATIO:
            raise ConfigError(f"mlp_ratio must be in (0, {MAX_MLP_RATIO:g}], got {self.mlp_ratio}")
        if not 0 <= self.drop_path_rate < 1:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if not 0 <= self.fg_frac <= 1:
            raise ConfigError(f"fg_frac must be in [0, 1], got {self.fg_frac}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if (not isinstance(value, (list, tuple)) or len(value) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise ConfigError(f"{name} must be 3 numbers (R, G, B), got {_REPR.repr(value)}")
            low, high = STD_BOUNDS if name == "std" else (-MEAN_BOUND, MEAN_BOUND)
            if not all(_finite(v) and low <= v <= high for v in value):
                rule = (f"finite and > 0 (in [{low:g}, {high:g}]: pixels are divided by it)" if name == "std"
                        else f"finite (in [{low:g}, {high:g}])")
                raise ConfigError(f"{name} must be 3 numbers (R, G, B), each {rule}, got {_REPR.repr(value)}")
        for name in ("stem", "name"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > MAX_NAME:
                raise ConfigError(f"{name} must be a string of at most {MAX_NAME} characters, got {_REPR.repr(value)}")
        if (self.img_size // self.patch_size) ** 2 > MAX_TOKENS:
            raise ConfigError(f"{self.img_size}/{self.patch_size} gives {(self.img_size // self.patch_size) ** 2} "
                              f"tokens per image; the limit is {MAX_TOKENS}")

    def parameter_estimate(self) -> int:
        """Parameters of the model this config builds, to within a few percent (transformer blocks, token
        embedding, position embedding and head; biases and norms counted). Cheap: nothing is allocated."""
        width, hidden = self.embed_dim, int(self.embed_dim * self.mlp_ratio)
        block = 4 * width * width + 2 * width * hidden + 9 * width + hidden  # qkv + proj, MLP, biases, 2 norms
        if self.stem == "patch":
            embed = 3 * self.patch_size**2 * width + width
        elif self.stem in LITE0_STEMS:
            trunk, channels = LITE0_TRUNK[self.stem]
            embed = trunk + channels * width + width
        else:  # four 3x3 stride-2 convs (3 -> D/8 -> D/4 -> D/2 -> D), deep: a 3x3 conv after each, then a 1x1
            embed = 9 * (3 * width // 8 + width**2 * (1 / 32 + 1 / 8 + 1 / 2)) + width * width
            if self.stem == "conv-deep":
                embed += 9 * width**2 * (1 / 64 + 1 / 16 + 1 / 4 + 1)
        tokens = self.num_tokens + 1  # the CLS token's position too
        return int(self.depth * block + embed + tokens * width + 3 * width + width * self.num_classes)

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
        """The config written by :meth:`to_json`.

        Raises:
            ConfigError: text that is not JSON, not an object, holds unknown keys or nested values (a config's
                values are numbers, strings or lists of numbers), or a config that fails the checks above.
        """
        try:
            data = json.loads(text)
        except RecursionError:  # "[[[[..." thousands deep: json's C scanner gives up before Python's stack does
            raise ConfigError("the config JSON is nested too deeply") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"the config is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"the config is not a JSON object, got {_REPR.repr(data)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown BAViT config keys {_REPR.repr(sorted(unknown))}")
        for key, value in data.items():
            items = value if isinstance(value, list) else [value]
            if any(isinstance(item, (list, dict)) for item in items) or isinstance(value, dict):
                raise ConfigError(f"config key {key!r} holds a nested value, got {_REPR.repr(value)}")
        return cls(**data)


SMALL = BAViTConfig(depth=2, name="bavit-small")
LARGE = BAViTConfig(depth=10, name="bavit-large")
PRESETS: Mapping[str, BAViTConfig] = MappingProxyType({"small": SMALL, "large": LARGE})  # read-only
