"""The pipeline's stages, each written once (paper §3.5): BAViT and the pruned YOLOS on their backend, the two
preprocessings (square resize, normalisation), the keep-mask rule and transformers' post-processing. The
:class:`~bavit.predictor.Predictor` (image in, everything the app shows out) is built on them; the evaluations and
benchmarks call it, so nothing wires these stages a second time.

Detections are only ever returned from real detector weights. When they cannot be loaded, ``detector_ready`` is
False and the detector latency is measured on the YOLOS-tiny architecture at random init (``latency_note`` says
so). Nothing here sets process-wide state (thread counts belong to entry points).
"""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .core.checkpoint import read_checkpoint
from .core.model import BAViT, bavit_pixels
from .core.registry import DEFAULT_BAVIT_CHECKPOINT
from .deploy.runtime import (
    DEFAULT_BACKEND,
    DetectorOutput,
    bavit_runner,
    check_backend,
    detector_runner,
)
from .errors import ConfigError, WeightsUnavailableError
from .prediction import post_process
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
from .pruning.accounting import bavit_macs
from .pruning.keep_mask import KeepMask, keep_mask_from_probs
from .pruning.settings import PruningSettings
from .pruning.yolos import patch_yolos

if TYPE_CHECKING:
    from transformers import YolosForObjectDetection


class Pipeline:
    """The stages of BAViT + CCA + pruned YOLOS, each written once: the models on their backend (:meth:`bavit_runner`,
    :meth:`detector_runner`), their preprocessing (:meth:`bavit_pixels`, :meth:`yolos_pixels`), the keep-mask rule
    (:meth:`select`) and the detector's post-processing (:meth:`post_process`). :class:`bavit.predictor.Predictor`
    strings them together in two steps.

    Args:
        bavit: BAViT checkpoint path (or a loaded :class:`BAViT`; it is copied, not changed).
        calibration: thresholds per target mean sparsity (``predict(sparsity=...)``); by default the one stored in
            the checkpoint at ``bavit`` (None for a loaded model).
        detector: YOLOS hub id or local directory, or a loaded ``YolosForObjectDetection`` (patched in place with
            :func:`bavit.pruning.yolos.patch_yolos`; its weights are taken as they are); None for no detector.
        image_size: the detector's square input side in pixels (:data:`YOLOS_SIZE`, 512: a 32x32 patch grid).
        score_threshold: detection score threshold for post-processing.
        resample_mode: 24 -> 32 grid resampling (``"nearest"``, or ``"any"`` to never lose FG area).
        backend: ``"onnxruntime"`` (the default, :data:`bavit.deploy.runtime.DEFAULT_BACKEND`) runs BAViT and the
            detector as their ONNX export (made in memory from the loaded weights on first use), ``"torch"`` runs
            the models themselves, ``"onnxruntime-int8"`` is onnxruntime with the detector's MatMuls in int8 too
            (the quantized detector a practitioner deploys first); pre- and post-processing are the same code for
            all.
        bavit_int8: with onnxruntime, run BAViT with int8 MatMuls (``bavit_int8.onnx``; faster at nearly the same
            token accuracy, measured in docs/results.md, "Token accounting (paper Table 2, Eq. 4) and measured speed-up");
            False runs the float32 graph, equal to torch within 1e-5.
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
    ):
        self.backend = check_backend(backend)
        self.bavit_int8 = bool(bavit_int8)
        self._bavit_runner = None
        self._detector_runner = None
        self._runner_lock = threading.Lock()
        if not isinstance(bavit, BAViT):  # a checkpoint path: its model and calibration, from one read
            saved = read_checkpoint(bavit)
            bavit = saved.model
            calibration = Calibration.from_checkpoint(saved) if calibration is None else calibration
        # An inference copy (conv-stem BatchNorms folded): the caller's model is left as it is.
        self.bavit = bavit.for_inference()
        self.calibration = calibration
        self.score_threshold = score_threshold
        self.resample_mode = resample_mode
        self._lock = threading.Lock()
        self._latency_model = None
        self.detector_requested = detector is not None
        self.image_size = int(image_size)
        opened = open_detector(detector)
        self.detector, self.processor = opened.model, opened.processor
        self.detector_ready = opened.model is not None
        self.detector_status, self.latency_note = opened.status, opened.latency_note
        # the detector's config (grid size, accounting); the YOLOS-tiny architecture without weights
        self.yolos_config = opened.model.config if opened.model is not None else yolos_tiny_config()
        yolos_grid(self.yolos_config.patch_size, self.image_size)  # a clear error for a size off the patch grid
        # BAViT's MAC count (the token accounting of every prediction) builds a weightless copy on the meta device
        # once per architecture, through torch code that keeps global state (torch.fx.traceback's annotations): done
        # here, in the thread that builds the pipeline, never in an event thread beside the ONNX export (dynamo) of
        # the app's warm-up thread. Both at once failed with "KeyError: 'custom'" (CI, test_app_badinput).
        bavit_macs(self.bavit.config)

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
                    runner = (detector_runner(model, self.backend, self.image_size) if kind == "detector"
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
        return self._runner("bavit")(self.bavit_pixels([image]))[0].float().numpy()

    def bavit_pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The one BAViT preprocessing: RGB images -> ``float32 [B, 3, S, S]`` (square resize to the config's
        ``img_size``, normalised with its ``mean`` / ``std``)."""
        config = self.bavit.config
        return torch.stack([bavit_pixels(image, config) for image in images])

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
        return yolos_grid(self.yolos_config.patch_size, self.image_size)

    def yolos_pixels(self, images: Union[Image.Image, Sequence[Image.Image]]) -> torch.Tensor:
        """The one detector preprocessing: RGB image(s) -> ``[B, 3, 512, 512]`` normalised YOLOS input (square
        resize, as the paper; ``B = 1`` for one image), with the loaded processor's statistics when it has its own."""
        mean, std = YOLOS_MEAN, YOLOS_STD
        if self.processor is not None:
            mean, std = tuple(self.processor.image_mean), tuple(self.processor.image_std)
        images = [images] if isinstance(images, Image.Image) else images
        return torch.stack([yolos_pixels(image, self.image_size, mean, std) for image in images])

    def select(self, fg_prob: torch.Tensor, settings: PruningSettings) -> tuple[KeepMask, Optional[float]]:
        """The keep-mask rule (:func:`bavit.pruning.keep_mask.keep_mask_from_probs`) for ``settings`` on
        ``fg_prob`` ``[G, G]`` or ``[B, G, G]``, a calibrated sparsity resolved to its threshold first.

        Returns:
            The grids (``keep_mask`` on this detector's grid) and the threshold applied (None for top-k).
        Raises:
            ConfigError: ``sparsity`` without a calibration, or outside its calibrated range.
        """
        threshold = settings.threshold
        if settings.sparsity is not None:
            if self.calibration is None:
                raise ConfigError("this BAViT checkpoint carries no calibration, so a mean sparsity cannot be set; "
                                  "run python -m bavit calibrate --checkpoint CKPT, or use a threshold or keep ratio")
            threshold = self.calibration.threshold(settings.sparsity, settings.cca_steps)
        selection = keep_mask_from_probs(fg_prob, threshold=threshold, keep_ratio=settings.keep_ratio,
                                         cca_steps=settings.cca_steps, grid=self.yolos_grid, resample=self.resample_mode)
        return selection, threshold

    def post_process(self, outputs: DetectorOutput, sizes: Sequence[tuple[int, int]],
                     score_threshold: Optional[float] = None) -> list[dict]:
        """transformers' post-processing of detector outputs (:func:`bavit.prediction.post_process`) for images of
        ``sizes`` ``(height, width)``; ``score_threshold`` defaults to the Predictor's.

        Raises:
            WeightsUnavailableError: no detector weights are loaded (random-init outputs are never detections).
        """
        if not self.detector_ready:
            raise WeightsUnavailableError(f"no detector weights are loaded, so there are no detections. "
                                          f"{self.detector_status}")
        threshold = self.score_threshold if score_threshold is None else score_threshold
        return post_process(self.processor, outputs, sizes, threshold)


__all__ = ["Pipeline"]
