"""The one object the app, the CLI and the benchmarks share: image in, BAViT grids + pruned detections out.

Pipeline (paper §3.5 and appendix): image -> 384x384 -> BAViT FG probabilities ``[24, 24]`` -> threshold (or
top-k) -> CCA -> nearest resample to the ``[32, 32]`` YOLOS grid -> pruned YOLOS at 512x512 -> the model's own
post-processing (``YolosImageProcessor.post_process_object_detection``) with boxes in original-image pixels.

Detections are only ever returned from real detector weights. When they cannot be loaded, ``detector_ready`` is
False, ``detections`` is None, and the detector latency is measured on the YOLOS-tiny architecture at random
init (``latency_note`` says so).
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .accounting import TokenAccounting, token_accounting
from .cca import cca, resample_grid
from .errors import ConfigError, WeightsUnavailableError
from .imageio import ImageInput, load_image, square_resize, to_tensor
from .model import BAViT, load_checkpoint
from .yolos_loading import DEFAULT_DETECTOR, HOW_TO_GET_WEIGHTS, load_yolos_model
from .yolos_pruned import patch_yolos, random_yolos_tiny

DEFAULT_BAVIT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "bavit-small-coco.safetensors"
YOLOS_SIZE = 512  # YOLOS-tiny's input in the paper (32x32 patch grid)
RANDOM_INIT_NOTE = "YOLOS-tiny architecture, random init (latency only; no detections shown)"


@dataclass
class Analysis:
    """Everything the app shows for one image. Grids are row-major, True = FG (kept)."""

    fg_prob: np.ndarray  # float32 [24, 24], BAViT FG probability at 384x384
    grid_raw: np.ndarray  # bool [24, 24], thresholded (or top-k)
    grid_cca: np.ndarray  # bool [24, 24], after CCA (a superset of grid_raw)
    keep_mask: np.ndarray  # bool [32, 32], YOLOS patches computed at 512x512
    detections: Optional[list[dict]]  # dict(box=(x0, y0, x1, y1) px, label=str, score=float); None without weights
    dense_detections: Optional[list[dict]]
    accounting: TokenAccounting
    timings_ms: dict[str, float]  # bavit_ms (0 when cached), cca_ms, pruned_ms, dense_ms?, postprocess_ms, total_ms
    image_size: tuple[int, int]  # (width, height) of the RGB image the boxes refer to
    latency_note: str
    settings: dict = field(default_factory=dict)  # threshold, keep_ratio, cca_steps used


def select_patches(fg_prob: torch.Tensor, threshold: float = 0.5, keep_ratio: Optional[float] = None) -> torch.Tensor:
    """FG grid from probabilities: ``prob >= threshold``, or the top ``round(keep_ratio * cells)`` cells.

    Args:
        fg_prob: ``[H, W]`` or ``[B, H, W]`` FG probabilities.
        threshold: probability threshold in [0, 1] (ignored when ``keep_ratio`` is given).
        keep_ratio: fraction (0, 1] of cells to keep, highest probability first (ties: row-major order).
    Returns:
        bool grid of the same shape.
    """
    if keep_ratio is None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold is a probability in [0, 1], got {threshold}")
        return fg_prob >= threshold
    if not 0.0 < keep_ratio <= 1.0:
        raise ConfigError(f"keep_ratio is a fraction in (0, 1], got {keep_ratio}")
    flat = fg_prob.reshape(-1, fg_prob.shape[-2] * fg_prob.shape[-1])
    count = max(1, round(keep_ratio * flat.shape[1]))
    order = torch.sort(-flat, dim=1, stable=True).indices[:, :count]
    grid = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    return grid.reshape(fg_prob.shape)


def keep_mask_from_grid(grid: torch.Tensor, cca_steps: int = 3, size: int = YOLOS_SIZE // 16,
                        mode: str = "nearest") -> tuple[torch.Tensor, torch.Tensor]:
    """CCA on the BAViT grid, then resample to the YOLOS grid. Returns ``(grid_cca, keep_mask)``."""
    grid_cca = cca(grid, steps=cca_steps)
    return grid_cca, resample_grid(grid_cca, (size, size), mode=mode)


def _detections(processor, outputs, id2label: dict, image_size: tuple[int, int], score_threshold: float) -> list[dict]:
    width, height = image_size
    result = processor.post_process_object_detection(outputs, threshold=score_threshold, target_sizes=[(height, width)])[0]
    detections = []
    for score, label, box in zip(result["scores"].tolist(), result["labels"].tolist(), result["boxes"].tolist()):
        x0, y0, x1, y1 = (min(max(v, 0.0), limit) for v, limit in zip(box, (width, height, width, height)))
        detections.append({"box": (x0, y0, x1, y1), "label": str(id2label.get(label, label)), "score": float(score)})
    detections.sort(key=lambda item: -item["score"])
    return detections


class Predictor:
    """BAViT + CCA + pruned YOLOS on single images.

    Args:
        bavit: BAViT checkpoint path (or a loaded :class:`BAViT`).
        detector: YOLOS hub id or local directory; None for no detector.
        threads: ``torch.set_num_threads`` value (None leaves torch's default).
        score_threshold: detection score threshold for post-processing.
        cache_size: images whose FG probabilities are kept (LRU).
        resample_mode: 24 -> 32 grid resampling (``"nearest"``, or ``"any"`` to never lose FG area).
    Raises:
        CheckpointError: the BAViT checkpoint is missing or not one.
        ConfigError: the detector is not a YOLOS model.
    """

    def __init__(
        self,
        bavit: Union[str, os.PathLike, BAViT] = DEFAULT_BAVIT_CHECKPOINT,
        detector: Union[str, os.PathLike, None] = DEFAULT_DETECTOR,
        threads: Optional[int] = None,
        score_threshold: float = 0.5,
        cache_size: int = 64,
        resample_mode: str = "nearest",
    ):
        if threads:
            torch.set_num_threads(int(threads))
        # An inference copy (conv-stem BatchNorms folded): the caller's model is left as it is.
        self.bavit = (bavit if isinstance(bavit, BAViT) else load_checkpoint(bavit)).for_inference()
        self.score_threshold = score_threshold
        self.resample_mode = resample_mode
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.bavit_runs = 0  # BAViT forwards actually run (cache misses)
        self.detector = None
        self.detector_ready = False
        self.processor = None
        self._latency_model = None
        self.detector_requested = detector is not None
        if detector is None:
            self.detector_status = "No detector: BAViT grids only."
            self.latency_note = "no detector"
            return
        try:
            self.detector = patch_yolos(load_yolos_model(detector))
        except WeightsUnavailableError as exc:
            self.detector_status = f"Detector weights unavailable, detections are off. {exc}"
            if HOW_TO_GET_WEIGHTS not in str(exc):
                self.detector_status += " " + HOW_TO_GET_WEIGHTS
            self.latency_note = RANDOM_INIT_NOTE
            return
        except ValueError as exc:
            raise ConfigError(f"detector {detector}: {exc}") from None
        self.detector_ready = True
        self.detector_status = f"Detector: {detector} (pretrained weights)."
        self.latency_note = f"{detector} weights"
        self.processor = self._load_processor(detector)

    @staticmethod
    def _load_processor(source):
        from transformers import YolosImageProcessor

        try:
            return YolosImageProcessor.from_pretrained(str(source))
        except Exception:  # no preprocessor_config.json next to the weights: the YOLOS defaults (ImageNet stats)
            return YolosImageProcessor()

    @property
    def latency_model(self):
        """The detector, or the YOLOS-tiny architecture at random init when no weights are loaded (latency only)."""
        if self.detector is not None:
            return self.detector
        with self._lock:
            if self._latency_model is None:
                self._latency_model = patch_yolos(random_yolos_tiny())
        return self._latency_model

    @property
    def yolos_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.processor is not None:
            return tuple(self.processor.image_mean), tuple(self.processor.image_std)
        return self.bavit.config.mean, self.bavit.config.std

    def yolos_pixels(self, image) -> torch.Tensor:
        """RGB PIL image -> ``[1, 3, 512, 512]`` normalised YOLOS input (square resize, as the paper)."""
        mean, std = self.yolos_mean_std
        return to_tensor(image, YOLOS_SIZE, mean, std)[None]

    # --- BAViT -------------------------------------------------------------------------------------------------
    def _fg_prob_timed(self, image) -> tuple[np.ndarray, float]:
        config = self.bavit.config
        resized = square_resize(image, config.img_size)
        key = hashlib.blake2b(np.asarray(resized).tobytes(), digest_size=16).hexdigest()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached, 0.0
        start = time.perf_counter()
        pixels = to_tensor(resized, config.img_size, config.mean, config.std)[None]
        with torch.inference_mode():
            probs = self.bavit.fg_prob(pixels)[0].float().numpy()
        elapsed = (time.perf_counter() - start) * 1000.0
        probs.setflags(write=False)
        with self._lock:
            self.bavit_runs += 1
            self._cache[key] = probs
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return probs, elapsed

    def fg_prob(self, image: ImageInput) -> np.ndarray:
        """``float32 [24, 24]`` FG probabilities (read-only array, cached per image content)."""
        return self._fg_prob_timed(load_image(image))[0]

    # --- full pipeline -----------------------------------------------------------------------------------------
    def analyze(
        self,
        image: ImageInput,
        threshold: float = 0.5,
        keep_ratio: Optional[float] = None,
        cca_steps: int = 3,
        detect: bool = True,
        dense: bool = False,
        fg_prob: Optional[np.ndarray] = None,
    ) -> Analysis:
        """Run the pipeline on one image (see module docstring). ``fg_prob`` skips BAViT (cached probabilities)."""
        start_total = time.perf_counter()
        start = time.perf_counter()
        rgb = load_image(image)
        timings = {"load_ms": (time.perf_counter() - start) * 1000.0}
        grid = self.bavit.config.grid_size
        if fg_prob is not None:
            probs = np.asarray(fg_prob, dtype=np.float32)
            if probs.shape != (grid, grid):
                raise ValueError(f"fg_prob must have shape [{grid}, {grid}], got {list(probs.shape)}")
            timings["bavit_ms"] = 0.0
        else:
            probs, timings["bavit_ms"] = self._fg_prob_timed(rgb)

        start = time.perf_counter()
        grid_raw = select_patches(torch.from_numpy(np.array(probs)), threshold, keep_ratio)
        grid_cca, keep_mask = keep_mask_from_grid(grid_raw, cca_steps, mode=self.resample_mode)
        timings["cca_ms"] = (time.perf_counter() - start) * 1000.0

        model = self.latency_model if detect and self.detector_requested else None
        yolos_config = model.config if model is not None else None
        accounting = token_accounting(int(keep_mask.sum()), yolos_config, self.bavit.config)
        detections = dense_detections = None
        if model is not None:
            start = time.perf_counter()
            pixels = self.yolos_pixels(rgb)
            timings["preprocess_ms"] = (time.perf_counter() - start) * 1000.0
            with torch.inference_mode():
                start = time.perf_counter()
                outputs = model(pixel_values=pixels, keep_mask=keep_mask[None])
                timings["pruned_ms"] = (time.perf_counter() - start) * 1000.0
                if dense:
                    start = time.perf_counter()
                    dense_outputs = model(pixel_values=pixels)
                    timings["dense_ms"] = (time.perf_counter() - start) * 1000.0
            if self.detector_ready:
                start = time.perf_counter()
                id2label = model.config.id2label
                detections = _detections(self.processor, outputs, id2label, rgb.size, self.score_threshold)
                if dense:
                    dense_detections = _detections(self.processor, dense_outputs, id2label, rgb.size, self.score_threshold)
                timings["postprocess_ms"] = (time.perf_counter() - start) * 1000.0
        timings["total_ms"] = (time.perf_counter() - start_total) * 1000.0 - timings.get("dense_ms", 0.0)
        return Analysis(
            fg_prob=np.array(probs, dtype=np.float32),
            grid_raw=grid_raw.numpy(),
            grid_cca=grid_cca.numpy(),
            keep_mask=keep_mask.numpy(),
            detections=detections,
            dense_detections=dense_detections,
            accounting=accounting,
            timings_ms=timings,
            image_size=rgb.size,
            latency_note=self.latency_note,
            settings={"threshold": threshold, "keep_ratio": keep_ratio, "cca_steps": cca_steps},
        )


__all__ = ["Predictor", "Analysis", "select_patches", "keep_mask_from_grid", "DEFAULT_BAVIT_CHECKPOINT", "YOLOS_SIZE"]
