"""The one object the app, the CLI and the benchmarks share: image in, BAViT grids + pruned detections out.

Two steps, as in SAM's ``SamPredictor``: :meth:`Predictor.set_image` runs the expensive part once (decode, the
384x384 resize and BAViT's FG probabilities ``[24, 24]``, cached by image content) and returns a
:class:`PreparedImage`; :meth:`Predictor.predict` is the cheap call a slider makes: the keep-mask rule
(:func:`bavit.pruning.keep_mask.keep_mask_from_probs`: threshold or top-k, CCA, resample to the ``[32, 32]`` YOLOS
grid), the pruned YOLOS at 512x512 and the model's own post-processing
(``YolosImageProcessor.post_process_object_detection``) with boxes in original-image pixels.

Detections are only ever returned from real detector weights. When they cannot be loaded, ``detector_ready`` is
False, ``detections`` is None, and the detector latency is measured on the YOLOS-tiny architecture at random
init (``latency_note`` says so). The Predictor sets no process-wide state (thread counts belong to entry points).
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
from PIL import Image

from .box_ops import box_clip_xyxy
from .core.config import PRESETS
from .core.model import BAViT, load_checkpoint
from .deploy.runtime import DEFAULT_BACKEND, DetectorOutput, bavit_runner, check_backend, detector_runner
from .errors import CheckpointError, ConfigError, WeightsUnavailableError
from .imageio import ImageInput, load_image, square_resize, to_tensor
from .pruning.accounting import TokenAccounting, token_accounting
from .pruning.calibration import Calibration, load_calibration
from .pruning.detector import (
    DEFAULT_DETECTOR,
    HOW_TO_GET_WEIGHTS,
    YOLOS_MEAN,
    YOLOS_SIZE,
    YOLOS_STD,
    load_yolos_model,
    yolos_grid,
    yolos_pixels,
)
from .pruning.keep_mask import DEFAULT_CCA_STEPS, keep_mask_from_probs
from .pruning.settings import PruningSettings
from .pruning.yolos import patch_yolos, random_yolos_tiny, yolos_tiny_config

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
# The shipped checkpoint of each config preset (bavit.core.config.PRESETS) that has one. BAViT-large is not shipped:
# trained on the same images it did not beat small on the holdout (README, "BAViT-large"), so it would only cost
# latency; build_predictor("large", checkpoint=...) loads one you trained.
SHIPPED = {"small": CHECKPOINTS / "bavit-small-coco.safetensors"}
NOT_SHIPPED = {"large": "no BAViT-large is shipped: on this project's training images it did not beat BAViT-small "
                        "(README, 'BAViT-large'); train one (python -m bavit train --model large) and pass checkpoint="}
DEFAULT_BAVIT_CHECKPOINT = SHIPPED["small"]
RANDOM_INIT_NOTE = "YOLOS-tiny architecture, random init (latency only; no detections shown)"


@dataclass(frozen=True)
class PreparedImage:
    """What :meth:`Predictor.set_image` computed once for an image (immutable; safe to share between threads)."""

    image: Image.Image  # RGB, the size the boxes refer to
    fg_prob: np.ndarray  # float32 [G, G] read-only BAViT FG probabilities (G = 24 at 384 px)
    bavit_ms: float  # BAViT latency of this call; 0.0 when the probabilities came from the cache
    key: str  # content hash of the 384x384 resize (the cache key)


@dataclass
class Analysis:
    """Everything the app shows for one image and one setting. Grids are row-major, True = FG (kept)."""

    fg_prob: np.ndarray  # float32 [24, 24], BAViT FG probability at 384x384
    grid_raw: np.ndarray  # bool [24, 24], thresholded (or top-k)
    grid_cca: np.ndarray  # bool [24, 24], after CCA (a superset of grid_raw)
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


def _detections(processor, outputs, id2label: dict, image_size: tuple[int, int], score_threshold: float) -> list[dict]:
    width, height = image_size
    result = processor.post_process_object_detection(outputs, threshold=score_threshold, target_sizes=[(height, width)])[0]
    boxes = box_clip_xyxy(result["boxes"], image_size).tolist()
    detections = []
    for score, label, box in zip(result["scores"].tolist(), result["labels"].tolist(), boxes):
        detections.append({"box": tuple(box), "label": str(id2label.get(label, label)), "score": float(score)})
    detections.sort(key=lambda item: -item["score"])
    return detections


class Predictor:
    """BAViT + CCA + pruned YOLOS on single images.

    Args:
        bavit: BAViT checkpoint path (or a loaded :class:`BAViT`; it is copied, not changed).
        calibration: thresholds per target mean sparsity (``predict(sparsity=...)``); by default the one stored in
            the checkpoint at ``bavit`` (None for a loaded model).
        detector: YOLOS hub id or local directory; None for no detector.
        score_threshold: detection score threshold for post-processing.
        cache_size: images whose FG probabilities are kept (LRU).
        resample_mode: 24 -> 32 grid resampling (``"nearest"``, or ``"any"`` to never lose FG area).
        backend: ``"onnxruntime"`` (the default, :data:`bavit.deploy.runtime.DEFAULT_BACKEND`) runs BAViT and the
            detector as their ONNX export (made in memory from the loaded weights on first use), ``"torch"`` runs
            the models themselves; pre- and post-processing are the same code for both.
        bavit_int8: with onnxruntime, run BAViT with int8 MatMuls (``bavit_int8.onnx``; faster at nearly the same
            token accuracy, measured in README "Token accounting (paper Table 2, Eq. 4) and measured speed-up");
            False runs the float32 graph, equal to torch within 1e-5.
    Raises:
        CheckpointError: the BAViT checkpoint is missing or not one.
        ConfigError: the detector is not a YOLOS model.
    """

    def __init__(
        self,
        bavit: Union[str, os.PathLike, BAViT] = DEFAULT_BAVIT_CHECKPOINT,
        detector: Union[str, os.PathLike, None] = DEFAULT_DETECTOR,
        score_threshold: float = 0.5,
        cache_size: int = 64,
        resample_mode: str = "nearest",
        calibration: Optional[Calibration] = None,
        backend: str = DEFAULT_BACKEND,
        bavit_int8: bool = True,
    ):
        self.backend = check_backend(backend)
        self.bavit_int8 = bool(bavit_int8)
        self._bavit_runner = None
        self._detector_runner = None
        self._runner_lock = threading.Lock()
        # An inference copy (conv-stem BatchNorms folded): the caller's model is left as it is.
        self.bavit = (bavit if isinstance(bavit, BAViT) else load_checkpoint(bavit)).for_inference()
        if calibration is None and not isinstance(bavit, BAViT):
            calibration = load_calibration(bavit)
        self.calibration = calibration
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
        self.yolos_config = yolos_tiny_config()  # the detector's config once loaded (grid size, accounting)
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
        self.yolos_config = self.detector.config
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

    def _runner(self, kind: str):
        """The backend's BAViT or detector runner (:mod:`bavit.deploy.runtime`), built once on first use."""
        attribute = f"_{kind}_runner"
        runner = getattr(self, attribute)
        if runner is None:
            model = self.latency_model if kind == "detector" else None
            with self._runner_lock:  # not self._lock: an export takes seconds, the image cache must stay readable
                runner = getattr(self, attribute)
                if runner is None:
                    runner = (detector_runner(model, self.backend, YOLOS_SIZE) if kind == "detector"
                              else bavit_runner(self.bavit, self.backend, int8=self.bavit_int8))
                    setattr(self, attribute, runner)
        return runner

    @property
    def bavit_runner(self):
        """BAViT on this backend: ``pixels [B, 3, 384, 384] -> fg_prob [B, 24, 24]`` (torch tensors)."""
        return self._runner("bavit")

    @property
    def detector_runner(self):
        """The detector on this backend: ``(pixels [B, 3, 512, 512], keep_mask [B, 32, 32] | None) ->
        DetectorOutput``; without weights, the YOLOS-tiny architecture at random init (latency only)."""
        return self._runner("detector")

    def run_bavit(self, image: Image.Image) -> np.ndarray:
        """One uncached BAViT forward on this backend: RGB image -> ``float32 [G, G]`` FG probabilities (the square
        resize and normalisation included). :meth:`set_image` is the cached way."""
        return self._bavit_probs(square_resize(image, self.bavit.config.img_size))

    def _bavit_probs(self, resized: Image.Image) -> np.ndarray:
        """BAViT on an image already square-resized to its input size: ``float32 [G, G]`` FG probabilities."""
        config = self.bavit.config
        pixels = to_tensor(resized, config.img_size, config.mean, config.std)[None]
        return self._runner("bavit")(pixels)[0].float().numpy()

    def run_detector(self, pixels: torch.Tensor, keep_mask: Optional[torch.Tensor] = None) -> DetectorOutput:
        """The detector (or, without weights, the YOLOS-tiny architecture for latency) on this backend:
        ``pixels [B, 3, 512, 512]`` (:meth:`yolos_pixels`) and ``keep_mask bool [B, 32, 32]`` (None: dense)."""
        return self._runner("detector")(pixels, keep_mask)

    def warm_up(self, detect: bool = True) -> None:
        """Build the backend's runners now (the onnxruntime export takes seconds) instead of on the first image."""
        self._runner("bavit")
        if detect and self.detector_requested:
            self._runner("detector")

    @property
    def yolos_grid(self) -> int:
        """Side of the YOLOS patch grid at :data:`YOLOS_SIZE` (32 for a 16 px patch)."""
        return yolos_grid(self.yolos_config.patch_size)

    def yolos_pixels(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> ``[1, 3, 512, 512]`` normalised YOLOS input (square resize, as the paper), with the
        loaded processor's statistics when it has its own."""
        if self.processor is not None:
            return yolos_pixels(image, YOLOS_SIZE, tuple(self.processor.image_mean), tuple(self.processor.image_std))[None]
        return yolos_pixels(image, YOLOS_SIZE, YOLOS_MEAN, YOLOS_STD)[None]

    # --- step 1: the expensive part, once per image -------------------------------------------------------------
    def set_image(self, image: ImageInput) -> PreparedImage:
        """Decode ``image`` and compute BAViT's ``float32 [24, 24]`` FG probabilities (cached by content, LRU).

        Raises:
            DataError: the image cannot be read.
        """
        rgb = load_image(image)
        config = self.bavit.config
        resized = square_resize(rgb, config.img_size)
        key = hashlib.blake2b(np.asarray(resized).tobytes(), digest_size=16).hexdigest()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return PreparedImage(rgb, cached, 0.0, key)
        self._runner("bavit")  # built before timing (the onnxruntime export)
        start = time.perf_counter()
        probs = self._bavit_probs(resized)
        elapsed = (time.perf_counter() - start) * 1000.0
        probs.setflags(write=False)
        with self._lock:
            self.bavit_runs += 1
            self._cache[key] = probs
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return PreparedImage(rgb, probs, elapsed, key)

    # --- step 2: the cheap part, per setting ----------------------------------------------------------------------
    def predict(
        self,
        prepared: PreparedImage,
        *,
        threshold: Optional[float] = None,
        keep_ratio: Optional[float] = None,
        sparsity: Optional[float] = None,
        cca_steps: int = DEFAULT_CCA_STEPS,
        detect: bool = True,
        dense: bool = False,
    ) -> Analysis:
        """Keep mask, pruned YOLOS and post-processing for one setting of a prepared image.

        Give at most one of ``threshold``, ``keep_ratio`` and ``sparsity``.

        Args:
            prepared: from :meth:`set_image`.
            threshold: FG-probability threshold (default 0.5 when neither of the others is given).
            keep_ratio: keep this fraction (0, 1] of BAViT's tokens, most probable first, instead.
            sparsity: calibrated mode (the paper's Table 2): the threshold that gives this *mean* sparsity over
                images (a fraction of the YOLOS patches pruned) with ``cca_steps``, from :attr:`calibration`; this
                image's own sparsity follows its content (``analysis.accounting.sparsity``).
            cca_steps: CCA iterations on BAViT's grid.
            detect: run the pruned detector (its latency is measured even without weights).
            dense: also run the dense detector (``timings_ms["dense_ms"]``, ``dense_detections``).
        Raises:
            ConfigError: a setting out of range, more than one given, or ``sparsity`` without a calibration.
        """
        start_total = time.perf_counter()
        setting = PruningSettings(threshold=threshold, keep_ratio=keep_ratio, sparsity=sparsity, cca_steps=cca_steps)
        threshold, keep_ratio, cca_steps = setting.threshold, setting.keep_ratio, setting.cca_steps
        if setting.sparsity is not None:
            if self.calibration is None:
                raise ConfigError("this BAViT checkpoint carries no calibration, so a mean sparsity cannot be set; "
                                  "run python -m bavit calibrate --checkpoint CKPT, or use a threshold or keep ratio")
            threshold = self.calibration.threshold(setting.sparsity, cca_steps)
        model = self.latency_model if detect and self.detector_requested else None
        runner = self._runner("detector") if model is not None else None
        start = time.perf_counter()
        selection = keep_mask_from_probs(torch.from_numpy(np.array(prepared.fg_prob)), threshold=threshold,
                                         keep_ratio=keep_ratio, cca_steps=cca_steps, grid=self.yolos_grid,
                                         resample=self.resample_mode)
        timings = {"bavit_ms": prepared.bavit_ms, "cca_ms": (time.perf_counter() - start) * 1000.0}
        keep_mask = selection.keep_mask
        accounting = token_accounting(int(keep_mask.sum()), self.yolos_config, self.bavit.config)
        detections = dense_detections = None
        if model is not None:
            start = time.perf_counter()
            pixels = self.yolos_pixels(prepared.image)
            timings["preprocess_ms"] = (time.perf_counter() - start) * 1000.0
            start = time.perf_counter()
            outputs = runner(pixels, keep_mask[None])
            timings["pruned_ms"] = (time.perf_counter() - start) * 1000.0
            if dense:
                start = time.perf_counter()
                dense_outputs = runner(pixels)
                timings["dense_ms"] = (time.perf_counter() - start) * 1000.0
            if self.detector_ready:
                start = time.perf_counter()
                id2label, size = model.config.id2label, prepared.image.size
                detections = _detections(self.processor, outputs, id2label, size, self.score_threshold)
                if dense:
                    dense_detections = _detections(self.processor, dense_outputs, id2label, size, self.score_threshold)
                timings["postprocess_ms"] = (time.perf_counter() - start) * 1000.0
        timings["total_ms"] = (time.perf_counter() - start_total) * 1000.0 - timings.get("dense_ms", 0.0)
        return Analysis(
            fg_prob=np.array(prepared.fg_prob, dtype=np.float32),
            grid_raw=selection.grid_raw.numpy(),
            grid_cca=selection.grid_cca.numpy(),
            keep_mask=keep_mask.numpy(),
            detections=detections,
            dense_detections=dense_detections,
            accounting=accounting,
            timings_ms=timings,
            image_size=prepared.image.size,
            latency_note=self.latency_note,
            settings={"threshold": threshold, "keep_ratio": keep_ratio, "sparsity": sparsity, "cca_steps": cca_steps},
        )

    def analyze(self, image: ImageInput, **settings) -> Analysis:
        """One-shot ``predict(set_image(image), **settings)`` (settings as :meth:`predict`)."""
        return self.predict(self.set_image(image), **settings)


def build_predictor(name: str = "small", checkpoint: Union[str, os.PathLike, None] = None,
                    detector: Union[str, os.PathLike, None] = DEFAULT_DETECTOR, **kwargs) -> Predictor:
    """A Predictor by config preset name (``"small"`` = 2 layers, ``"large"`` = 10), like SAM's model registry.

    Args:
        name: a key of :data:`bavit.core.config.PRESETS`.
        checkpoint: a BAViT checkpoint of that preset's depth (default: the shipped one, :data:`SHIPPED`; there is
            none for ``"large"``).
        detector, **kwargs: passed to :class:`Predictor`.
    Raises:
        ConfigError: unknown name. CheckpointError: missing checkpoint (or none shipped for ``name``), or one of
            another depth.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown BAViT preset {name!r}; use one of {sorted(PRESETS)}")
    if checkpoint is None and name not in SHIPPED:
        raise CheckpointError(NOT_SHIPPED[name])
    path = checkpoint if checkpoint is not None else SHIPPED[name]
    model = load_checkpoint(path)
    if model.config.depth != PRESETS[name].depth:
        raise CheckpointError(f"{path} holds a {model.config.depth}-layer BAViT, not {name} "
                              f"({PRESETS[name].depth} layers)")
    kwargs.setdefault("calibration", load_calibration(path))
    return Predictor(bavit=model, detector=detector, **kwargs)


__all__ = ["Predictor", "PreparedImage", "Analysis", "build_predictor", "DEFAULT_BAVIT_CHECKPOINT", "SHIPPED"]
