"""What one sparse fine-tuning step sees (:mod:`bavit.engine.finetune`): its settings, the samples (YOLOS input,
DETR-style targets, and BAViT's input or a ground-truth-box keep mask) and the BAViT keep masks, computed as the app
computes them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..box_ops import box_xywh_to_xyxy
from ..core.cca import cca
from ..core.labels import BOX_TAU, labels_from_boxes
from ..core.model import bavit_pixels
from ..data.coco import CocoDetection, yolos_targets
from ..errors import ConfigError
from ..predictor import Predictor
from ..pruning.detector import YOLOS_SIZE, yolos_grid, yolos_pixels
from ..pruning.settings import (
    PruningSettings,
    cca_steps_value,
    keep_ratio_value,
    threshold_value,
)

MASK_SOURCES = ("bavit", "gt-boxes")


@dataclass
class FinetuneConfig:
    """Optimisation and masking settings (stored in ``train_state.json``)."""

    epochs: int = 30  # paper: 30 epochs of sparse fine-tuning
    batch_size: int = 8
    lr: float = 2.5e-5  # AdamW, constant
    weight_decay: float = 1e-4
    clip_grad: float = 0.1  # max gradient norm (DETR / YOLOS default); 0 disables
    image_size: int = YOLOS_SIZE
    mask_source: str = "gt-boxes"
    threshold: float | None = 0.5  # BAViT FG-probability threshold (mask_source="bavit")
    keep_ratio: float | None = None  # top-k fraction instead of the threshold
    cca_steps: int = 3
    box_tau: float = BOX_TAU  # gt-boxes: a patch is FG when at least this fraction of it lies in a box
    seed: int = 0
    workers: int = 0

    def __post_init__(self) -> None:
        if self.mask_source not in MASK_SOURCES:
            raise ConfigError(f"mask_source must be one of {MASK_SOURCES}, got {self.mask_source!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        self.cca_steps = cca_steps_value(self.cca_steps)
        if self.keep_ratio is not None:
            self.keep_ratio = keep_ratio_value(self.keep_ratio)
        if self.threshold is not None:
            self.threshold = threshold_value(self.threshold)


class FinetuneSamples(torch.utils.data.Dataset):
    """``dataset[i] -> dict``: ``pixels [3, S, S]`` (YOLOS input), ``target`` (YOLOS labels dict), and either
    ``bavit_pixels [3, 384, 384]`` (mask_source="bavit") or ``gt_keep bool [S/p, S/p]`` (mask_source="gt-boxes")."""

    def __init__(self, images: CocoDetection, category_to_label: dict[int, int], cfg: FinetuneConfig,
                 patch_size: int, bavit_config=None):
        self.images, self.category_to_label, self.cfg = images, category_to_label, cfg
        self.grid = yolos_grid(patch_size, cfg.image_size)
        self.bavit_config = bavit_config

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item = self.images[index]
        sample = {
            "pixels": yolos_pixels(item.image, self.cfg.image_size),
            "target": yolos_targets(item.anns, item.width, item.height, self.category_to_label),
        }
        if self.bavit_config is not None:
            sample["bavit_pixels"] = bavit_pixels(item.image, self.bavit_config)
        else:
            boxes = box_xywh_to_xyxy([a["bbox"] for a in item.anns]).tolist()
            grid = labels_from_boxes(boxes, (item.width, item.height), (self.grid, self.grid), "coverage",
                                     self.cfg.box_tau)
            sample["gt_keep"] = cca(grid.bool(), self.cfg.cca_steps)
        return sample


def collate(samples: list[dict]) -> dict:
    batch = {"pixels": torch.stack([s["pixels"] for s in samples]), "targets": [s["target"] for s in samples]}
    for key in ("bavit_pixels", "gt_keep"):
        if key in samples[0]:
            batch[key] = torch.stack([s[key] for s in samples])
    return batch


@torch.no_grad()
def bavit_keep_mask(predictor: Predictor, bavit_pixels: torch.Tensor, cfg: FinetuneConfig) -> torch.Tensor:
    """``[B, 3, 384, 384]`` -> ``bool [B, grid, grid]``: the inference-time masks, as the app computes them
    (the Predictor's BAViT runner and :meth:`~bavit.predictor.Predictor.select`)."""
    settings = PruningSettings(threshold=None if cfg.keep_ratio is not None else cfg.threshold,
                               keep_ratio=cfg.keep_ratio, cca_steps=cfg.cca_steps)
    return predictor.select(predictor.bavit_runner(bavit_pixels), settings)[0].keep_mask


__all__ = ["FinetuneConfig", "FinetuneSamples", "collate", "bavit_keep_mask", "MASK_SOURCES"]
