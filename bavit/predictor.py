"""The one object the app, the CLI and the benchmarks share: image in, BAViT grids + pruned detections out.

Two steps, as in SAM's ``SamPredictor``: :meth:`Predictor.set_image` runs the expensive part once (decode, the
square resize to BAViT's input size and its FG probabilities ``[G, G]``, 16x16 for the shipped model, cached by
image content); :meth:`Predictor.predict` is the cheap call a slider makes: the keep-mask rule (threshold, top-k or calibrated sparsity, CCA, resample to the
``[32, 32]`` YOLOS grid), the pruned YOLOS at 512x512 and transformers' post-processing, boxes in image pixels.
The evaluations and benchmarks run the same two steps on batches (:meth:`Predictor.set_images`,
:meth:`Predictor.predict_batch`). Detections come only from real detector weights (:class:`bavit.pipeline.Pipeline`).
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .core.model import BAViT
from .core.registry import DEFAULT_BAVIT_CHECKPOINT
from .errors import ConfigError
from .imageio import ImageInput, load_image, square_resize
from .pipeline import Pipeline
from .prediction import Analysis, BatchPrediction, PreparedBatch, PreparedImage, detection_dicts
from .pruning.accounting import token_accounting
from .pruning.detector import DEFAULT_DETECTOR
from .pruning.keep_mask import DEFAULT_CCA_STEPS
from .pruning.settings import PruningSettings

if TYPE_CHECKING:
    from transformers import YolosForObjectDetection


class Predictor(Pipeline):
    """BAViT + CCA + pruned YOLOS in two steps: single images (:meth:`set_image`, :meth:`predict`) or batches
    (:meth:`set_images`, :meth:`predict_batch`), on the stages of :class:`bavit.pipeline.Pipeline`.

    Args:
        bavit, detector, score_threshold, **kwargs: as :class:`~bavit.pipeline.Pipeline` (calibration,
            resample_mode, backend, bavit_int8, image_size).
        cache_size: images whose FG probabilities :meth:`set_image` keeps (LRU).
    Raises:
        CheckpointError: the BAViT checkpoint is missing or not one.
        ConfigError: the detector is not a YOLOS model.
    """

    def __init__(self, bavit: Union[str, os.PathLike, BAViT] = DEFAULT_BAVIT_CHECKPOINT,
                 detector: Union[str, os.PathLike, YolosForObjectDetection, None] = DEFAULT_DETECTOR,
                 score_threshold: float = 0.5, cache_size: int = 64, **kwargs):
        super().__init__(bavit, detector, score_threshold, **kwargs)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.bavit_runs = 0  # BAViT forwards actually run (cache misses)

    # --- step 1: the expensive part, once per image -------------------------------------------------------------
    def set_image(self, image: ImageInput) -> PreparedImage:
        """Decode ``image`` and compute BAViT's ``float32 [G, G]`` FG probabilities (cached by content, LRU).

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
        probs = self._runner("bavit")(self.bavit_pixels([resized]))[0].float().numpy()
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
        model = self.latency_model if detect and self.detector_requested else None
        runner = self._runner("detector") if model is not None else None
        start = time.perf_counter()
        selection, threshold = self.select(torch.from_numpy(np.array(prepared.fg_prob)), setting)
        keep_ratio, cca_steps = setting.keep_ratio, setting.cca_steps
        timings = {"bavit_ms": prepared.bavit_ms, "cca_ms": (time.perf_counter() - start) * 1000.0}
        keep_mask = selection.keep_mask
        accounting = token_accounting(int(keep_mask.sum()), self.yolos_config, self.bavit.config,
                                      (self.image_size, self.image_size))
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
                target = [(size[1], size[0])]
                detections = detection_dicts(self.post_process(outputs, target)[0], id2label, size)
                if dense:
                    dense_detections = detection_dicts(self.post_process(dense_outputs, target)[0], id2label, size)
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

    # --- the same two steps on batches (evaluations and benchmarks) -----------------------------------------------
    def set_images(self, images: Sequence[Image.Image], *, bavit: bool = True, detect: bool = True) -> PreparedBatch:
        """Step 1 for ``B`` decoded images: BAViT's FG probabilities ``[B, G, G]`` (one batched, uncached run) and
        the detector's input ``[B, 3, 512, 512]``, each through the same preprocessing as :meth:`set_image`.

        Args:
            images: PIL images (converted to RGB); boxes will refer to their sizes.
            bavit: run BAViT (not needed when only the dense detector runs).
            detect: make the detector's input (skipped when the Predictor has no detector).
        """
        rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        fg_prob = self._runner("bavit")(self.bavit_pixels(rgb)).float() if bavit else None
        pixels = self.yolos_pixels(rgb) if detect and self.detector_requested else None
        return PreparedBatch(rgb, fg_prob, pixels)

    def predict_batch(self, batch: PreparedBatch, settings: Optional[PruningSettings] = None, *,
                      detect: bool = True) -> BatchPrediction:
        """Step 2 for a batch and one setting: the keep-mask rule (:meth:`select`) and the pruned detector.

        Args:
            batch: from :meth:`set_images`.
            settings: the setting, or None for the dense detector (nothing pruned, BAViT not needed).
            detect: run the detector (raw outputs in ``outputs``; :meth:`post_process` turns them into boxes).
        Raises:
            ConfigError: a pruned setting on a batch prepared without BAViT, or a detector run without a detector
                (or a batch prepared without its input).
        """
        selection = threshold = None
        if settings is None:
            kept = [self.yolos_grid**2] * len(batch.images)
        else:
            if batch.fg_prob is None:
                raise ConfigError("a pruned setting needs BAViT's probabilities: prepare the batch with bavit=True")
            selection, threshold = self.select(batch.fg_prob, settings)
            kept = selection.kept_patches.tolist()
        outputs = None
        if detect:
            if batch.pixels is None:
                raise ConfigError("no detector input: build the Predictor with a detector and prepare with detect=True")
            outputs = self._runner("detector")(batch.pixels, None if selection is None else selection.keep_mask)
        return BatchPrediction(settings, threshold, selection, kept, outputs)


__all__ = ["Predictor", "PreparedImage", "Analysis", "PreparedBatch", "BatchPrediction"]
