"""The inference backends of the pipeline: ``torch`` (the library models), ``onnxruntime`` (their ONNX export,
:mod:`bavit.deploy.export`) and ``onnxruntime-int8`` (the same with the detector's MatMuls in int8 too: the
quantized detector a practitioner would deploy first, and the baseline pruning has to beat).

Each backend gives two runners with one interface, so the Predictor, the benchmark and the mAP harness run either
without knowing which:

- a BAViT runner: ``pixels float32 [B, 3, 384, 384] (torch) -> fg_prob float32 [B, 24, 24] (torch)``; onnxruntime
  runs BAViT with int8 MatMuls by default (``bavit_int8.onnx``: faster than torch at nearly the same token
  accuracy, :func:`bavit.deploy.export.quantize_bavit` says where that is measured), the detector in float32 (its
  accuracy cannot be checked here without its weights);
- a detector runner: ``(pixel_values [B, 3, 512, 512], keep_mask bool [B, 32, 32] | None) ->``
  :class:`DetectorOutput` (``logits``, ``pred_boxes`` as torch tensors, what ``YolosImageProcessor`` post-processes).

Pre- and post-processing stay with the callers (``imageio.to_tensor``, ``detector.yolos_pixels``, the keep-mask rule,
the processor): one copy for both backends. onnxruntime runs the pruned graph per image (its kept count is part of
the graph's input shape); a batch whose images keep different counts runs image by image (measured against padding
in the torch backend: ``python -m benchmarks.batch_modes``). Thread counts are read from torch's setting when a
runner is built (entry points set it: ``--threads``), never set here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..errors import ConfigError

BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
# The default backend, from `python -m bavit bench` on the 2-core CPU machine (docs/results.md, "Token accounting
# (paper Table 2, Eq. 4) and measured speed-up"): the pipeline ran faster on onnxruntime than in torch eager at
# every level, batch 1 and 8.
DEFAULT_BACKEND = "onnxruntime"


@dataclass
class DetectorOutput:
    """What a detector runner returns: ``YolosForObjectDetection``'s ``logits [B, 100, C + 1]`` and ``pred_boxes
    [B, 100, 4]`` (cx, cy, w, h in [0, 1]); ``YolosImageProcessor.post_process_object_detection`` takes it."""

    logits: torch.Tensor
    pred_boxes: torch.Tensor


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    return name


class TorchBAViT:
    """BAViT's ``fg_prob`` under ``torch.inference_mode``."""

    backend = "torch"

    def __init__(self, model):
        self.model = model

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.fg_prob(pixels)


class TorchDetector:
    """A patched ``YolosForObjectDetection`` (:func:`bavit.pruning.yolos.patch_yolos`): dense or on ``keep_mask``."""

    backend = "torch"

    def __init__(self, model):
        self.model = model

    def __call__(self, pixel_values: torch.Tensor, keep_mask: Optional[torch.Tensor] = None) -> DetectorOutput:
        with torch.inference_mode():
            out = self.model(pixel_values=pixel_values, keep_mask=keep_mask)
        return DetectorOutput(out.logits, out.pred_boxes)


def session(model: Union[bytes, str, os.PathLike], threads: Optional[int] = None):
    """An onnxruntime CPU ``InferenceSession`` on ``threads`` intra-op threads (default: torch's current setting)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads sleep instead of spinning (onnxruntime's default spins, like libgomp's): the pipeline hands
    # over between BAViT, numpy/torch CPU work and the detector, and on a shared CPU spinning threads steal the
    # cores the next step needs (a same-process probe at 35% sparsity found the pruned YOLOS faster this way).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OrtBAViT:
    """``bavit.onnx`` in onnxruntime."""

    backend = "onnxruntime"

    def __init__(self, model: Union[bytes, str, os.PathLike], threads: Optional[int] = None,
                 per_image: bool = False):
        self.session = session(model, threads)
        # Dynamic int8 quantization scales activations by the whole input tensor, so in a batch one image's result
        # would depend on the others: the int8 graph runs image by image.
        self.per_image = per_image

    @classmethod
    def from_model(cls, model, threads: Optional[int] = None, int8: bool = False,
                   exporter: Optional[Callable] = None) -> "OrtBAViT":
        """Export ``model`` in memory: float32 (``bavit.onnx``), or with int8 MatMuls (``bavit_int8.onnx``); in
        ``exporter`` (a :class:`bavit.deploy.export.ExportProcess`) when given."""
        from .export import export_bavit, quantize_bavit

        function = quantize_bavit if int8 else export_bavit
        return cls(exporter(function, model) if exporter else function(model), threads, per_image=int8)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        if self.per_image and len(array) > 1:
            return torch.from_numpy(np.concatenate([self.session.run(None, {"pixels": array[i : i + 1]})[0]
                                                    for i in range(len(array))]))
        return torch.from_numpy(self.session.run(None, {"pixels": array})[0])


class OrtDetector:
    """``yolos_pruned.onnx`` (one image at a time, its kept indices as input) and ``yolos_dense.onnx``, or their
    int8 versions (``int8=True``: dense batches then run image by image too, as dynamic quantization scales a
    whole batch by one factor)."""

    def __init__(self, pruned: Union[bytes, str, os.PathLike], dense: Union[bytes, str, os.PathLike], grid: int,
                 threads: Optional[int] = None, int8: bool = False):
        self.pruned = session(pruned, threads)
        self.dense = session(dense, threads)
        self.grid = grid
        self.int8 = int8
        self.backend = "onnxruntime-int8" if int8 else "onnxruntime"
        self.image_size = self.pruned.get_inputs()[0].shape[-1]

    @classmethod
    def from_model(cls, model, image_size: int, threads: Optional[int] = None, int8: bool = False,
                   exporter: Optional[Callable] = None) -> "OrtDetector":
        """Export ``model`` (a patched YOLOS) in memory, pruned and dense; in ``exporter`` (a
        :class:`bavit.deploy.export.ExportProcess`) when given."""
        from ..pruning.detector import yolos_grid
        from .export import export_dense_yolos, export_pruned_yolos, quantize_yolos

        def export(function):
            return exporter(function, model, image_size) if exporter else function(model, image_size)

        graphs = export(quantize_yolos) if int8 else (export(export_pruned_yolos), export(export_dense_yolos))
        return cls(*graphs, yolos_grid(model.config.patch_size, image_size), threads, int8=int8)

    def __call__(self, pixel_values: torch.Tensor, keep_mask: Optional[torch.Tensor] = None) -> DetectorOutput:
        pixels = np.ascontiguousarray(pixel_values.detach().cpu().numpy(), dtype=np.float32)
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ConfigError(f"the ONNX detector was exported for {self.image_size}x{self.image_size} inputs, got "
                              f"{pixels.shape[-2]}x{pixels.shape[-1]}")
        if keep_mask is None:
            runs = ([self.dense.run(None, {"pixel_values": pixels[b : b + 1]}) for b in range(len(pixels))]
                    if self.int8 else [self.dense.run(None, {"pixel_values": pixels})])
            return DetectorOutput(torch.from_numpy(np.concatenate([run[0] for run in runs])),
                                  torch.from_numpy(np.concatenate([run[1] for run in runs])))
        from ..pruning.yolos import check_keep_mask

        keep = check_keep_mask(keep_mask, pixels.shape[0], (self.grid, self.grid), torch.device("cpu"))
        logits, boxes = [], []
        for b, row in enumerate(keep.numpy()):  # per image: the kept count is the graph's dynamic axis
            index = np.flatnonzero(row).astype(np.int64)
            out = self.pruned.run(None, {"pixel_values": pixels[b : b + 1], "keep_index": index})
            logits.append(out[0])
            boxes.append(out[1])
        return DetectorOutput(torch.from_numpy(np.concatenate(logits)), torch.from_numpy(np.concatenate(boxes)))


def bavit_graph_name(backend: str, int8: bool = True) -> str:
    """What :func:`bavit_runner` runs on ``backend``, in words (a calibration records it): ``"torch float32"``,
    ``"onnxruntime int8 MatMuls"`` (the app's) or ``"onnxruntime float32"``."""
    if check_backend(backend) == "torch":
        return "torch float32"
    return f"{backend} {'int8 MatMuls' if int8 else 'float32'}"


def bavit_runner(model, backend: str, threads: Optional[int] = None, int8: bool = True,
                 exporter: Optional[Callable] = None):
    """BAViT on ``backend``: the torch model itself, or its ONNX export made in memory (with int8 MatMuls unless
    ``int8=False``, see :func:`bavit.deploy.export.quantize_bavit`; in ``exporter`` when given)."""
    if check_backend(backend) == "torch":
        return TorchBAViT(model)
    return OrtBAViT.from_model(model, threads, int8=int8, exporter=exporter)


def detector_runner(model, backend: str, image_size: int, threads: Optional[int] = None,
                    exporter: Optional[Callable] = None):
    """The detector on ``backend``: a patched YOLOS, or its pruned + dense ONNX export made in memory (with int8
    MatMuls on ``onnxruntime-int8``; in ``exporter`` when given)."""
    if check_backend(backend) == "torch":
        return TorchDetector(model)
    return OrtDetector.from_model(model, image_size, threads, int8=backend == "onnxruntime-int8", exporter=exporter)
