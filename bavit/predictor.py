"""The one object the app, the CLI, the evaluations and the benchmarks share: image in, BAViT grids + pruned
detections out (paper §3.5), in two steps as SAM's ``SamPredictor``, and built by preset name as SAM's
``build_sam``.

- :meth:`Predictor.set_image` runs the expensive part once per image: decode, the square resize to BAViT's input
  size and its FG probabilities ``[G, G]`` (16x16 for the shipped model), cached by image content.
- :meth:`Predictor.predict` is the cheap call a slider makes, for one :class:`~bavit.pruning.settings.PruningSettings`:
  the keep-mask rule (threshold, top-k, this image's sparsity or a calibrated mean sparsity; CCA; resample to the
  ``[32, 32]`` YOLOS grid), the pruned YOLOS at 512x512 and transformers' post-processing, boxes in image pixels.
- :meth:`Predictor.set_images` / :meth:`Predictor.predict_batch` run the same two steps on batches.
- :func:`build_predictor` builds one from a config preset name and its shipped checkpoint.

Each stage is one method here, calling that stage's one implementation: the two preprocessings
(:meth:`Predictor.bavit_pixels`, :meth:`Predictor.yolos_pixels`: :func:`bavit.core.model.bavit_pixels`,
:func:`bavit.pruning.detector.yolos_pixels`), the models on their backend (:meth:`Predictor.run_bavit`,
:meth:`Predictor.run_detector`: :mod:`bavit.deploy.runtime`), the keep-mask rule (:meth:`Predictor.select`:
:func:`bavit.pruning.keep_mask.keep_mask_from_probs`) and transformers' post-processing
(:meth:`Predictor.post_process`).
Detections only ever come from real detector weights: without them ``detector_ready`` is False, ``predict`` returns
no detections and runs no detector, and :meth:`Predictor.run_detector` times the YOLOS-tiny architecture at random
init (for the benchmarks and the app's latency, which say so). Nothing here sets process-wide state.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .box_ops import box_clip_xyxy
from .core.checkpoint import read_checkpoint
from .core.config import PRESETS
from .core.model import BAViT, bavit_pixels
from .core.registry import DEFAULT_BAVIT_CHECKPOINT, NOT_SHIPPED, SHIPPED
from .deploy.runtime import (
    DEFAULT_BACKEND, DetectorOutput, TorchBAViT, bavit_graph_name, bavit_runner, check_backend, detector_runner,
)
from .errors import CheckpointError, ConfigError, WeightsUnavailableError
from .imageio import ImageInput, load_image, square_resize
from .pruning.accounting import TokenAccounting, bavit_macs, token_accounting
from .pruning.calibration import Calibration
from .pruning.detector import (
    DEFAULT_DETECTOR,
    YOLOS_MEAN,
    YOLOS_SIZE,
    YOLOS_STD,
    open_detector,
    random_yolos_tiny,
    yolos_grid,
    yolos_pixels,
    yolos_tiny_config,
)
from .pruning.keep_mask import KeepMask, keep_mask_from_probs
from .pruning.settings import PruningSettings
from .pruning.yolos import patch_yolos

if TYPE_CHECKING:
    from transformers import YolosForObjectDetection


@dataclass(frozen=True)
class PreparedImage:
    """What :meth:`Predictor.set_image` computed once for an image (immutable; safe to share between threads)."""

    image: Image.Image  # RGB, the size the boxes refer to
    fg_prob: np.ndarray  # float32 [G, G] read-only BAViT FG probabilities (G = 16 at 256 px)
    bavit_ms: float  # BAViT latency of this call; 0.0 when the probabilities came from the cache
    key: str  # content hash of the square resize BAViT reads (the cache key)
    bavit_graph: str = ""  # what ran BAViT (bavit.deploy.runtime.bavit_graph_name); "" when from the cache


@dataclass(frozen=True)
class Analysis:
    """Everything :meth:`Predictor.predict` found for one image and one setting. Grids are row-major, True = FG."""

    settings: PruningSettings  # the setting asked for
    threshold: Optional[float]  # the threshold applied (a calibrated sparsity resolved to it); None for top-k
    fg_prob: np.ndarray  # float32 [G, G], BAViT FG probability
    grid_raw: np.ndarray  # bool [G, G], thresholded (or top-k)
    grid_cca: np.ndarray  # bool [G, G], after CCA (a superset of grid_raw)
    keep_mask: np.ndarray  # bool [32, 32], YOLOS patches computed at 512x512
    detections: Optional[list[dict]]  # dict(box=(x0, y0, x1, y1) px, label=str, score=float); None without weights
    dense_detections: Optional[list[dict]]
    accounting: TokenAccounting
    # ms: bavit_ms (of set_image; 0 when cached), cca_ms, preprocess_ms?, pruned_ms?, dense_ms?, postprocess_ms?,
    # total_ms (predict's own work, dense excluded); the detector's only when it ran (weights loaded)
    timings_ms: dict[str, float]
    image_size: tuple[int, int]  # (width, height) of the RGB image the boxes refer to

    @property
    def keep_ratio(self) -> Optional[float]:
        """The fraction of BAViT's cells selected by a top-k setting (``keep_ratio`` or ``image_sparsity``; None
        for a threshold)."""
        return float(self.grid_raw.mean()) if self.settings.top_k else None


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


def detection_dicts(result: dict, id2label: dict, image_size: tuple[int, int]) -> list[dict]:
    """One image's post-processed result as ``dict(box, label, score)``, boxes clipped to ``image_size`` ``(w, h)``,
    most confident first (what the app draws)."""
    boxes = box_clip_xyxy(result["boxes"], image_size).tolist()
    detections = [{"box": tuple(box), "label": str(id2label.get(label, label)), "score": float(score)}
                  for score, label, box in zip(result["scores"].tolist(), result["labels"].tolist(), boxes)]
    detections.sort(key=lambda item: -item["score"])
    return detections


class Predictor:
    """BAViT + CCA + pruned YOLOS in two steps: single images (:meth:`set_image`, :meth:`predict`) or batches
    (:meth:`set_images`, :meth:`predict_batch`).

    Args:
        bavit: BAViT checkpoint path (or a loaded :class:`BAViT`; it is copied, not changed).
        detector: YOLOS hub id or local directory, or a loaded ``YolosForObjectDetection`` (patched in place with
            :func:`bavit.pruning.yolos.patch_yolos`; its weights are taken as they are); None for no detector.
        score_threshold: detection score threshold for post-processing.
        resample_mode: BAViT grid -> YOLOS grid resampling (``"nearest"``, or ``"any"`` to never lose FG area).
        calibration: thresholds per target mean sparsity (``PruningSettings(sparsity=...)``); by default the one
            stored in the checkpoint at ``bavit`` (None for a loaded model).
        backend: ``"onnxruntime"`` (the default, :data:`bavit.deploy.runtime.DEFAULT_BACKEND`) runs BAViT and the
            detector as their ONNX export (made in memory from the loaded weights on first use), ``"torch"`` runs
            the models themselves, ``"onnxruntime-int8"`` is onnxruntime with the detector's MatMuls in int8 too;
            pre- and post-processing are the same code for all.
        bavit_int8: with onnxruntime, run BAViT with int8 MatMuls (faster at nearly the same token accuracy,
            docs/results.md); False runs the float32 graph, equal to torch within 1e-5.
        image_size: the detector's square input side in pixels (:data:`YOLOS_SIZE`, 512: a 32x32 patch grid).
        cache_size: images whose FG probabilities :meth:`set_image` keeps (LRU).
    Raises:
        CheckpointError: the BAViT checkpoint is missing or not one.
        ConfigError: the detector is not a YOLOS model.
    """

    def __init__(
        self,
        bavit: Union[str, os.PathLike, BAViT] = DEFAULT_BAVIT_CHECKPOINT,
        detector: Union[str, os.PathLike, YolosForObjectDetection, None] = DEFAULT_DETECTOR,
        score_threshold: float = 0.5,
        resample_mode: str = "nearest",
        calibration: Optional[Calibration] = None,
        backend: str = DEFAULT_BACKEND,
        bavit_int8: bool = True,
        image_size: int = YOLOS_SIZE,
        cache_size: int = 64,
    ):
        self.backend = check_backend(backend)
        self.bavit_int8 = bool(bavit_int8)
        if not isinstance(bavit, BAViT):  # a checkpoint path: its model and calibration, from one read
            saved = read_checkpoint(bavit)
            bavit = saved.model
            calibration = Calibration.from_checkpoint(saved) if calibration is None else calibration
        # An inference copy (conv-stem BatchNorms folded): the caller's model is left as it is.
        self.bavit = bavit.for_inference()
        self.calibration = calibration
        self.score_threshold = score_threshold
        self.resample_mode = resample_mode
        self.image_size = int(image_size)
        self.cache_size = cache_size
        self.detector_requested = detector is not None
        opened = open_detector(detector)
        self.detector, self.processor = opened.model, opened.processor
        self.detector_ready = opened.model is not None
        self.detector_status = opened.status
        # the detector's config (grid size, accounting); the YOLOS-tiny architecture without weights
        self.yolos_config = opened.model.config if opened.model is not None else yolos_tiny_config()
        yolos_grid(self.yolos_config.patch_size, self.image_size)  # a clear error for a size off the patch grid
        self._lock = threading.Lock()  # the image cache
        # one per runner, not self._lock: an export takes seconds, the cache must stay readable
        self._runner_locks = {"bavit": threading.Lock(), "detector": threading.Lock()}
        self._runners: dict[str, object] = {}
        self._latency_model = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.bavit_runs = 0  # BAViT forwards actually run (cache misses)
        # BAViT's MAC count (the token accounting of every prediction) builds a weightless copy on the meta device
        # once per architecture, through torch code that keeps global state (torch.fx.traceback's annotations): done
        # here, in the thread that builds the Predictor, never in an event thread beside an ONNX export (dynamo) in
        # another thread. Both at once raise "KeyError: 'custom'".
        bavit_macs(self.bavit.config)

    # --- the stages, one method each ---------------------------------------------------------------------------
    @property
    def latency_model(self):
        """The detector, or without weights the YOLOS-tiny architecture at random init (timing only: its outputs
        are never turned into detections)."""
        if self.detector is not None:
            return self.detector
        with self._lock:
            if self._latency_model is None:
                self._latency_model = patch_yolos(random_yolos_tiny())
        return self._latency_model

    def _runner(self, kind: str, exporter=None):
        """The backend's BAViT or detector runner (:mod:`bavit.deploy.runtime`), built once on first use (its
        onnxruntime export in ``exporter`` when given)."""
        runner = self._runners.get(kind)
        if runner is None:
            model = self.latency_model if kind == "detector" else None
            with self._runner_locks[kind]:
                runner = self._runners.get(kind)
                if runner is None:
                    runner = (detector_runner(model, self.backend, self.image_size, exporter=exporter)
                              if kind == "detector"
                              else bavit_runner(self.bavit, self.backend, int8=self.bavit_int8, exporter=exporter))
                    self._runners[kind] = runner
        return runner

    def built(self, kind: str) -> bool:
        """True once the ``"bavit"`` or ``"detector"`` runner is built (its onnxruntime export done), so a caller
        that must not wait for a build in another thread can answer without it for now."""
        return kind in self._runners

    @property
    def bavit_runner(self):
        """BAViT on this backend: ``pixels [B, 3, S, S] -> fg_prob [B, G, G]`` (torch tensors)."""
        return self._runner("bavit")

    @property
    def detector_runner(self):
        """The detector on this backend: ``(pixels [B, 3, 512, 512], keep_mask [B, 32, 32] | None) ->
        DetectorOutput``; without weights, :attr:`latency_model` (timing only)."""
        return self._runner("detector")

    def bavit_pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The one BAViT preprocessing: RGB images -> ``float32 [B, 3, S, S]`` (square resize to the config's
        ``img_size``, normalised with its ``mean`` / ``std``)."""
        config = self.bavit.config
        return torch.stack([bavit_pixels(image, config) for image in images])

    def run_bavit(self, image: Image.Image, runner=None) -> np.ndarray:
        """One uncached BAViT forward on this backend (or on ``runner``): RGB image -> ``float32 [G, G]`` FG
        probabilities (the square resize and normalisation included). :meth:`set_image` is the cached way."""
        return (runner or self._runner("bavit"))(self.bavit_pixels([image]))[0].float().numpy()

    @property
    def yolos_grid(self) -> int:
        """Side of the YOLOS patch grid at :attr:`image_size` (32 for a 16 px patch at 512)."""
        return yolos_grid(self.yolos_config.patch_size, self.image_size)

    def yolos_pixels(self, images: Union[Image.Image, Sequence[Image.Image]]) -> torch.Tensor:
        """The one detector preprocessing: RGB image(s) -> ``[B, 3, 512, 512]`` normalised YOLOS input (square
        resize, as the paper; ``B = 1`` for one image), with the loaded processor's statistics when it has its own."""
        mean, std = YOLOS_MEAN, YOLOS_STD
        if self.processor is not None:
            mean, std = tuple(self.processor.image_mean), tuple(self.processor.image_std)
        images = [images] if isinstance(images, Image.Image) else images
        return torch.stack([yolos_pixels(image, self.image_size, mean, std) for image in images])

    def run_detector(self, pixels: torch.Tensor, keep_mask: Optional[torch.Tensor] = None) -> DetectorOutput:
        """The detector on this backend (without weights, :attr:`latency_model`): ``pixels [B, 3, 512, 512]``
        (:meth:`yolos_pixels`) and ``keep_mask bool [B, 32, 32]`` (None: dense)."""
        return self._runner("detector")(pixels, keep_mask)

    def warm_up(self, detect: bool = True, exporter=None) -> None:
        """Build the backend's runners now (the onnxruntime export takes seconds) instead of on the first image:
        BAViT's, then (``detect``, when a detector was asked for) the detector's; in ``exporter`` (a
        :class:`~bavit.deploy.export.ExportProcess`: a server answering requests meanwhile keeps its GIL) when
        given."""
        self._runner("bavit", exporter)
        if detect and self.detector_requested:
            self._runner("detector", exporter)

    def select(self, fg_prob: torch.Tensor, settings: PruningSettings) -> tuple[KeepMask, Optional[float]]:
        """The keep-mask rule (:func:`bavit.pruning.keep_mask.keep_mask_from_probs`) for ``settings`` on
        ``fg_prob`` ``[G, G]`` or ``[B, G, G]``, a calibrated sparsity resolved to its threshold first.

        Returns:
            The grids (``keep_mask`` on this detector's grid) and the threshold applied (None for top-k).
        Raises:
            ConfigError: ``sparsity`` without a calibration, or outside its calibrated range.
        """
        if settings.sparsity is not None:
            if self.calibration is None:
                raise ConfigError("a mean sparsity needs a calibrated BAViT checkpoint and this one has no calibration "
                                  "(python -m bavit calibrate --checkpoint CKPT); use a threshold, a keep ratio or "
                                  "this image's sparsity (top-k)")
            settings = PruningSettings(threshold=self.calibration.threshold(settings.sparsity, settings.cca_steps),
                                       cca_steps=settings.cca_steps)
        selection = keep_mask_from_probs(fg_prob, settings, grid=self.yolos_grid, resample=self.resample_mode)
        return selection, settings.threshold

    def post_process(self, outputs: DetectorOutput, sizes: Sequence[tuple[int, int]],
                     score_threshold: Optional[float] = None) -> list[dict]:
        """transformers' ``YolosImageProcessor.post_process_object_detection`` for images of ``sizes``
        ``(height, width)``: per image ``scores [Q]``, ``labels [Q]``, ``boxes [Q, 4]`` (x0, y0, x1, y1 pixels), scores
        above ``score_threshold`` (default: the Predictor's).

        Raises:
            WeightsUnavailableError: no detector weights are loaded (random-init outputs are never detections).
        """
        if not self.detector_ready:
            raise WeightsUnavailableError(f"no detector weights are loaded, so there are no detections. "
                                          f"{self.detector_status}")
        threshold = self.score_threshold if score_threshold is None else score_threshold
        return self.processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=list(sizes))

    # --- step 1: the expensive part, once per image -------------------------------------------------------------
    def set_image(self, image: ImageInput, wait: bool = True) -> PreparedImage:
        """Decode ``image`` and compute BAViT's ``float32 [G, G]`` FG probabilities (cached by content, LRU).

        Args:
            wait: when the backend's BAViT runner is not built yet (its onnxruntime export takes seconds), build it
                or wait for the thread building it (True), or run the torch model now (False: a server's first
                requests are answered from what is ready while its warm-up exports; the result, within the int8
                graph's tolerance of the backend's, is not cached).
        Raises:
            DataError: the image cannot be read.
        """
        rgb = load_image(image)
        resized = square_resize(rgb, self.bavit.config.img_size)
        key = hashlib.blake2b(np.asarray(resized).tobytes(), digest_size=16).hexdigest()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return PreparedImage(rgb, cached, 0.0, key)
        if wait or self.built("bavit"):
            runner, graph = self._runner("bavit"), bavit_graph_name(self.backend, self.bavit_int8)  # built first
        else:
            runner, graph = TorchBAViT(self.bavit), bavit_graph_name("torch")
        start = time.perf_counter()
        probs = self.run_bavit(resized, runner)
        elapsed = (time.perf_counter() - start) * 1000.0
        probs.setflags(write=False)
        with self._lock:
            self.bavit_runs += 1
            if runner is self._runners.get("bavit"):
                self._cache[key] = probs
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return PreparedImage(rgb, probs, elapsed, key, graph)

    # --- step 2: the cheap part, per setting ----------------------------------------------------------------------
    def predict(self, prepared: PreparedImage, settings: Optional[PruningSettings] = None, *, detect: bool = True,
                dense: bool = False) -> Analysis:
        """Keep mask, pruned YOLOS and post-processing for one setting of a prepared image.

        Args:
            prepared: from :meth:`set_image`.
            settings: the selection and CCA steps (default ``PruningSettings()``: threshold 0.5, 3 CCA steps). With
                a calibrated ``sparsity`` (the paper's Table 2), this image's own sparsity follows its content
                (``analysis.accounting.sparsity``); with ``image_sparsity`` it is held at the target as nearly as
                the grid allows.
            detect: run the pruned detector and post-process its detections (only with detector weights).
            dense: also run the dense detector (``timings_ms["dense_ms"]``, ``dense_detections``).
        Raises:
            ConfigError: ``sparsity`` without a calibration, or outside its calibrated range.
        """
        settings = PruningSettings() if settings is None else settings
        start_total = time.perf_counter()
        selection, threshold = self.select(torch.from_numpy(np.array(prepared.fg_prob)), settings)
        timings = {"bavit_ms": prepared.bavit_ms, "cca_ms": (time.perf_counter() - start_total) * 1000.0}
        keep_mask = selection.keep_mask
        accounting = token_accounting(int(keep_mask.sum()), self.yolos_config, self.bavit.config,
                                      (self.image_size, self.image_size))
        detections = dense_detections = None
        if detect and self.detector_ready:
            runner = self._runner("detector")
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
            start = time.perf_counter()
            id2label, size = self.detector.config.id2label, prepared.image.size
            target = [(size[1], size[0])]
            detections = detection_dicts(self.post_process(outputs, target)[0], id2label, size)
            if dense:
                dense_detections = detection_dicts(self.post_process(dense_outputs, target)[0], id2label, size)
            timings["postprocess_ms"] = (time.perf_counter() - start) * 1000.0
        timings["total_ms"] = (time.perf_counter() - start_total) * 1000.0 - timings.get("dense_ms", 0.0)
        return Analysis(
            settings=settings,
            threshold=threshold,
            fg_prob=np.array(prepared.fg_prob, dtype=np.float32),
            grid_raw=selection.grid_raw.numpy(),
            grid_cca=selection.grid_cca.numpy(),
            keep_mask=keep_mask.numpy(),
            detections=detections,
            dense_detections=dense_detections,
            accounting=accounting,
            timings_ms=timings,
            image_size=prepared.image.size,
        )

    def analyze(self, image: ImageInput, settings: Optional[PruningSettings] = None, **options) -> Analysis:
        """One-shot ``predict(set_image(image), settings, **options)``."""
        return self.predict(self.set_image(image), settings, **options)

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
            detect: run the detector (raw outputs in ``outputs``; :meth:`post_process` turns them into boxes; without
                weights it is :attr:`latency_model`, for timing).
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
            outputs = self.run_detector(batch.pixels, None if selection is None else selection.keep_mask)
        return BatchPrediction(settings, threshold, selection, kept, outputs)


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
    saved = read_checkpoint(path)
    if saved.config.depth != PRESETS[name].depth:
        raise CheckpointError(f"{path} holds a {saved.config.depth}-layer BAViT, not {name} "
                              f"({PRESETS[name].depth} layers)")
    kwargs.setdefault("calibration", Calibration.from_checkpoint(saved))
    return Predictor(bavit=saved.model, detector=detector, **kwargs)


__all__ = ["Analysis", "BatchPrediction", "Predictor", "PreparedBatch", "PreparedImage", "build_predictor",
           "detection_dicts"]
