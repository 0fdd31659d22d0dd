"""What the :class:`~bavit.predictor.Predictor` returns, for one image (``PreparedImage``, ``Analysis``) and for a
batch (``PreparedBatch``, ``BatchPrediction``), and its detection post-processing (transformers' own)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .box_ops import box_clip_xyxy
from .deploy.runtime import DetectorOutput
from .pruning.accounting import TokenAccounting
from .pruning.keep_mask import KeepMask
from .pruning.settings import PruningSettings


@dataclass(frozen=True)
class PreparedImage:
    """What :meth:`Predictor.set_image` computed once for an image (immutable; safe to share between threads)."""

    image: Image.Image  # RGB, the size the boxes refer to
    fg_prob: np.ndarray  # float32 [G, G] read-only BAViT FG probabilities (G = 24 at 384 px)
    bavit_ms: float  # BAViT latency of this call; 0.0 when the probabilities came from the cache
    key: str  # content hash of the square resize BAViT reads (the cache key)


@dataclass
class Analysis:
    """Everything the app shows for one image and one setting. Grids are row-major, True = FG (kept)."""

    fg_prob: np.ndarray  # float32 [G, G], BAViT FG probability
    grid_raw: np.ndarray  # bool [G, G], thresholded (or top-k)
    grid_cca: np.ndarray  # bool [G, G], after CCA (a superset of grid_raw)
    keep_mask: np.ndarray  # bool [32, 32], YOLOS patches computed at 512x512
    detections: Optional[list[dict]]  # dict(box=(x0, y0, x1, y1) px, label=str, score=float); None without weights
    dense_detections: Optional[list[dict]]
    accounting: TokenAccounting
    # ms: bavit_ms (of set_image; 0 when cached), cca_ms, preprocess_ms?, pruned_ms?, dense_ms?, postprocess_ms?,
    # total_ms (predict's own work, dense excluded)
    timings_ms: dict[str, float]
    image_size: tuple[int, int]  # (width, height) of the RGB image the boxes refer to
    latency_note: str
    settings: dict = field(default_factory=dict)  # threshold, keep_ratio, cca_steps used


@dataclass(frozen=True)
class PreparedBatch:
    """What :meth:`Predictor.set_images` computed once for ``B`` images: the two models' inputs and BAViT's output."""

    images: list[Image.Image]  # RGB, the sizes the boxes refer to
    fg_prob: Optional[torch.Tensor]  # float32 [B, G, G] BAViT FG probabilities (None: BAViT not run)
    pixels: Optional[torch.Tensor]  # float32 [B, 3, S, S] the detector's input (None: no detector)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """``(height, width)`` of each image, as transformers' post-processing takes ``target_sizes``."""
        return [(image.height, image.width) for image in self.images]


@dataclass(frozen=True)
class BatchPrediction:
    """:meth:`Predictor.predict_batch` for one setting (``settings`` None: the dense detector, nothing pruned)."""

    settings: Optional[PruningSettings]
    threshold: Optional[float]  # the threshold applied (a calibrated sparsity resolved to it); None for top-k/dense
    selection: Optional[KeepMask]  # grid_raw / grid_cca bool [B, G, G], keep_mask bool [B, Y, Y]; None when dense
    kept_patches: list[int]  # detector patches computed per image (Y * Y when dense)
    outputs: Optional[DetectorOutput]  # logits [B, 100, C + 1], pred_boxes [B, 100, 4]; None without a detector run


def post_process(processor, outputs: DetectorOutput, sizes: Sequence[tuple[int, int]],
                 score_threshold: float) -> list[dict]:
    """transformers' ``YolosImageProcessor.post_process_object_detection``: per image ``scores [Q]``, ``labels [Q]``,
    ``boxes [Q, 4]`` (x0, y0, x1, y1 in pixels of ``sizes``' ``(height, width)``), scores above the threshold."""
    return processor.post_process_object_detection(outputs, threshold=score_threshold, target_sizes=list(sizes))


def detection_dicts(result: dict, id2label: dict, image_size: tuple[int, int]) -> list[dict]:
    """One image's post-processed result as ``dict(box, label, score)``, boxes clipped to ``image_size`` ``(w, h)``,
    most confident first (what the app draws)."""
    boxes = box_clip_xyxy(result["boxes"], image_size).tolist()
    detections = [{"box": tuple(box), "label": str(id2label.get(label, label)), "score": float(score)}
                  for score, label, box in zip(result["scores"].tolist(), result["labels"].tolist(), boxes)]
    detections.sort(key=lambda item: -item["score"])
    return detections


__all__ = ["PreparedImage", "Analysis", "PreparedBatch", "BatchPrediction", "post_process", "detection_dicts"]
