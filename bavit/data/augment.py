"""Training-time cache and augmentation that move the labels with the image.

A sample is ``(pixels [3, S, S], labels [G, G], fractions [G, G])``: the binary token labels of the paper's rule
and each token's object-pixel fraction (non-void pixels; -1 where the label is ignored), which ranking losses use.

Images are decoded once and kept as square uint8 tensors ``[3, R, R]`` with their FG-coverage and void maps
``[R, R]`` (area fractions at the cache resolution R), and as the un-augmented view ``uint8 [3, S, S]`` (the
original image square-resized to the model input). An augmented sample crops the same window from the image and
the maps (or takes the whole un-augmented view), recomputes the token labels from the cropped coverage map, flips
and colour-jitters the uint8 pixels, and only then makes the model input with BAViT's one preprocessing
(:func:`bavit.core.model.bavit_pixels`: PIL's bilinear square resize and the config's normalisation), the
function the Predictor calls. So the un-augmented view is, bit for bit, what the Predictor feeds BAViT for the
same image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.config import BAViTConfig
from ..core.labels import (
    BOX_TAU,
    IGNORE_INDEX,
    VOID_IGNORE_FRAC,
    area_fractions,
    fg_from_box_scores,
    fg_from_fractions,
)
from ..core.model import bavit_pixels
from ..imageio import square_resize
from .records import Record

# Boxes are rasterised at the cache resolution R: a cache pixel is inside a box when at least half of it is
# (labels_from_boxes' coverage rule on an R x R grid). Not the token rule's tau, which applies to the crop's tokens.
BOX_RASTER_COVERAGE = 0.5


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = (0.25, 1.0)  # random-resized-crop area fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    no_crop_prob: float = 0.25  # share of samples that keep the whole image (matches test-time view)
    hflip_prob: float = 0.5
    color: float = 0.3  # brightness / contrast / saturation jitter strength


class CachedSamples:
    """Decoded training images (``uint8 [3, R, R]`` at ``cache_size`` R, and the un-augmented view ``uint8 [3, S,
    S]`` at the model input S, each square-resized from the decoded image by PIL's bilinear filter) + coverage maps
    + exact un-augmented labels, held in memory."""

    def __init__(self, records: list[Record], config: BAViTConfig, cache_size: int = 512, label_source: str = "mask",
                 box_rule: str = "coverage", box_tau: float = BOX_TAU, progress: bool = False):
        from tqdm import tqdm

        self.config = config
        grid = (config.grid_size, config.grid_size)
        images, plain, coverage, void, labels, fractions = [], [], [], [], [], []
        for record in tqdm(records, desc="decoding", disable=not progress, leave=False):
            decoded = record.load_image()
            images.append(_uint8_tensor(square_resize(decoded, cache_size)))
            plain.append(_uint8_tensor(square_resize(decoded, config.img_size)))
            if label_source == "mask":
                cover = area_fractions(record.fg_mask(), (cache_size, cache_size))
            else:  # boxes: coverage of box interiors, rasterised at the cache resolution
                cover = record.labels((cache_size, cache_size), "boxes", box_rule="coverage",
                                      box_tau=BOX_RASTER_COVERAGE).numpy()
            coverage.append(torch.from_numpy(cover.astype(np.float16)))
            if record.void_mask is not None:
                void.append(torch.from_numpy(area_fractions(record.void_mask(), (cache_size, cache_size)).astype(np.float16)))
            else:
                void.append(None)
            labels.append(record.labels(grid, label_source, fg_frac=config.fg_frac, box_rule=box_rule, box_tau=box_tau))
            fractions.append(_fractions(torch.from_numpy(cover).float(), void[-1], config, labels[-1]))
        self.images, self.plain, self.coverage, self.void = images, plain, coverage, void
        self.labels = torch.stack(labels)
        self.fractions = torch.stack(fractions)
        self.label_source = label_source
        self.box_rule, self.box_tau = box_rule, box_tau

    def __len__(self) -> int:
        return len(self.images)

    def fg_prior(self) -> torch.Tensor:
        """``[G, G]`` per-cell FG frequency of the un-augmented labels (the centre-prior baseline)."""
        valid = self.labels != IGNORE_INDEX
        return ((self.labels == 1) & valid).float().sum(0) / valid.float().sum(0).clamp(min=1)


def _fractions(coverage: torch.Tensor, void: torch.Tensor | None, config: BAViTConfig,
               labels: torch.Tensor) -> torch.Tensor:
    """``[G, G]`` object fraction of each token's non-void pixels from ``[R, R]`` coverage maps (-1 where ignored)."""
    size = config.img_size
    fine = F.interpolate(coverage[None, None], size=(size, size), mode="bilinear", align_corners=False)
    fg = F.avg_pool2d(fine, config.patch_size)[0, 0]
    if void is not None:
        fine_void = F.interpolate(void.float()[None, None], size=(size, size), mode="bilinear", align_corners=False)
        fg = fg / (1.0 - F.avg_pool2d(fine_void, config.patch_size)[0, 0]).clamp(min=1e-6)
    return torch.where(labels == IGNORE_INDEX, torch.full_like(fg, -1.0), fg.clamp(0.0, 1.0))


def _uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``uint8 [3, H, W]``."""
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def plain_sample(cache: CachedSamples, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The un-augmented view: the whole image through :func:`~bavit.core.model.bavit_pixels` (equal to the
    Predictor's input for the same image), exact labels, object fractions."""
    return bavit_pixels(cache.plain[index], cache.config), cache.labels[index], cache.fractions[index]


def augmented_sample(cache: CachedSamples, index: int, aug: AugmentConfig,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One augmented ``(pixels [3, S, S], labels [G, G], fractions [G, G])``: a crop of the cached image (or the
    whole un-augmented view), a flip and colour jitter on its uint8 pixels, then BAViT's one preprocessing
    (:func:`~bavit.core.model.bavit_pixels`)."""
    config = cache.config
    if rng.random() < aug.no_crop_prob:
        image, labels, fractions = cache.plain[index], cache.labels[index].clone(), cache.fractions[index].clone()
    else:
        cached = cache.images[index]
        full = cached.shape[-1]
        area = full * full
        for _ in range(10):
            target = area * rng.uniform(*aug.scale)
            log_ratio = rng.uniform(math.log(aug.ratio[0]), math.log(aug.ratio[1]))
            w = int(round(math.sqrt(target * math.exp(log_ratio))))
            h = int(round(math.sqrt(target / math.exp(log_ratio))))
            if 0 < w <= full and 0 < h <= full:
                break
        else:
            w = h = full
        y0 = int(rng.integers(0, full - h + 1))
        x0 = int(rng.integers(0, full - w + 1))
        size = config.img_size
        image = cached[:, y0 : y0 + h, x0 : x0 + w]

        def cell_fraction(map_: torch.Tensor) -> torch.Tensor:
            window_map = map_[y0 : y0 + h, x0 : x0 + w].float()[None, None]
            fine = F.interpolate(window_map, size=(size, size), mode="bilinear", align_corners=False)
            return F.avg_pool2d(fine, config.patch_size)[0, 0]

        fg = cell_fraction(cache.coverage[index])
        if cache.void[index] is not None:
            void = cell_fraction(cache.void[index])
            fraction = fg / (1.0 - void).clamp(min=1e-6)
        else:
            void, fraction = torch.zeros_like(fg), fg
        if cache.label_source == "mask":
            labels = fg_from_fractions(fraction, config.fg_frac).long()
        else:
            labels = fg_from_box_scores(fraction, cache.box_tau).long()
        labels[void > VOID_IGNORE_FRAC] = IGNORE_INDEX
        fractions = torch.where(labels == IGNORE_INDEX, torch.full_like(fraction, -1.0), fraction.clamp(0.0, 1.0))
    if rng.random() < aug.hflip_prob:
        image, labels, fractions = image.flip(-1), labels.flip(-1), fractions.flip(-1)
    if aug.color > 0:
        image = _color_jitter(image, aug.color, rng)
    return bavit_pixels(image, config), labels, fractions


def _color_jitter(image: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Brightness ``b``, contrast ``c`` and saturation ``s`` jitter of ``uint8 [3, H, W]`` RGB ``x``, rounded back to
    uint8 (an 8-bit image, as the Predictor receives).

    In turn: ``y = b x``; ``y = c (y - mean(y)) + mean(y)``; ``y = s (y - luma(y)) + luma(y)``, clamped to the 8-bit
    range. The three are affine, so they are applied at once: ``y = b c s x + b c (1 - s) luma(x) + b (1 - c)
    mean(x)`` (fewer passes over a crop that can be the whole 512 px cache)."""
    brightness, contrast, saturation = (rng.uniform(1 - strength, 1 + strength) for _ in range(3))
    rgb = image.float()
    grey = float(rgb.mean())
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    offset = luma.mul_(brightness * contrast * (1 - saturation)).add_(brightness * (1 - contrast) * grey)
    jittered = rgb.mul_(brightness * contrast * saturation).add_(offset)
    return jittered.clamp_(0.0, 255.0).round_().to(torch.uint8)


class AugmentedDataset(torch.utils.data.Dataset):
    """Map-style dataset over a :class:`CachedSamples`; ``augment=None`` gives the plain view."""

    def __init__(self, cache: CachedSamples, augment: AugmentConfig | None, seed: int = 0):
        self.cache, self.augment, self.seed = cache, augment, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int):
        if self.augment is None:
            return plain_sample(self.cache, index)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return augmented_sample(self.cache, index, self.augment, rng)
