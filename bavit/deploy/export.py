"""ONNX export of the pipeline's two models; the command line is ``python -m bavit export``
(:mod:`bavit.cli.export`).

Three graphs, each an export-ready ``nn.Module`` view of a model (:class:`BAViTGraph`, :class:`PrunedYolosGraph`,
:class:`DenseYolosGraph`; no weights copied), exported with ``torch.onnx.export`` (the dynamo exporter, torch's
default) and checked with ``onnx.checker``:

- ``bavit.onnx``: ``pixels float32 [B, 3, 384, 384]`` -> ``fg_prob float32 [B, 24, 24]`` (B dynamic), and
  ``bavit_int8.onnx``, the same with int8 MatMuls (:func:`quantize_bavit`; what the onnxruntime backend runs);
- ``yolos_pruned.onnx``: ``pixel_values float32 [1, 3, 512, 512]`` and ``keep_index int64 [K]`` (the kept patches,
  row-major on the 32x32 grid; K dynamic, 1..1024) -> ``logits [1, 100, C + 1]``, ``pred_boxes [1, 100, 4]``
  (cx, cy, w, h in [0, 1]), the outputs of transformers' ``YolosForObjectDetection``;
- ``yolos_dense.onnx``: ``pixel_values [B, 3, 512, 512]`` -> ``logits``, ``pred_boxes`` (B dynamic).

``export.json`` beside them records the inputs, normalisation, labels, the weights each graph holds (and whether the
detector weights are pretrained), the keep-mask rule's settings and the BAViT calibration, so a deployment needs
nothing else (README.md there says how to run them with onnxruntime and numpy alone).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..core.model import BAViT
from ..errors import CheckpointError
from ..files import atomic_dir, check_output_dir
from ..pruning.detector import YOLOS_SIZE, yolos_grid
from ..pruning.yolos import patch_yolos

OPSET = 18
FILES = {"bavit": "bavit.onnx", "bavit_int8": "bavit_int8.onnx", "yolos_pruned": "yolos_pruned.onnx",
         "yolos_dense": "yolos_dense.onnx"}
MANIFEST = "export.json"
README = "README.md"
WRITTEN = (*FILES.values(), MANIFEST, README)  # everything an export puts in its folder


_CACHE: OrderedDict[tuple, bytes] = OrderedDict()  # (graph, weights digest, args) -> exported bytes, this process
_CACHE_SIZE = 8
_CACHE_LOCK = threading.Lock()


class BAViTGraph(nn.Module):
    """``pixels [B, 3, S, S] -> fg_prob [B, G, G]`` (``BAViT.fg_prob``)."""

    def __init__(self, model: BAViT):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.fg_prob(pixels)


class DenseYolosGraph(nn.Module):
    """``pixels -> (logits, pred_boxes)`` of an unmodified ``YolosForObjectDetection``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor):
        out = self.model(pixel_values=pixels, keep_mask=None) if hasattr(self.model, "pruned_batch_mode") \
            else self.model(pixel_values=pixels)
        return out.logits, out.pred_boxes


class PrunedYolosGraph(nn.Module):
    """``(pixels [1, 3, H, W], keep_index int64 [K]) -> (logits, pred_boxes)``: YOLOS on the kept patches only, by
    the patch's own :meth:`~bavit.pruning.yolos.PrunedYolosMixin.forward_kept` (no second implementation): tokens
    are gathered *before* the encoder, so every layer runs on ``1 + K + 100`` tokens; at batch 1 no key mask is
    needed.

    Args:
        model: a ``YolosForObjectDetection`` (patched here with :func:`bavit.pruning.yolos.patch_yolos` if it is not).
    """

    def __init__(self, model):
        super().__init__()
        self.model = patch_yolos(model)

    def forward(self, pixels: torch.Tensor, keep_index: torch.Tensor):
        return self.model.forward_kept(pixels, keep_index)


def weights_digest(module: torch.nn.Module) -> str:
    """A content hash of a module's parameters and buffers (names, shapes, dtypes, values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _cached(key: tuple, make) -> bytes:
    """``make()``, remembered for this process by ``key`` (building a Predictor twice exports once)."""
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    blob = make()
    with _CACHE_LOCK:
        _CACHE[key] = blob
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return blob


def _export(module: torch.nn.Module, args: tuple, input_names: list[str], output_names: list[str],
            dynamic_shapes: dict) -> bytes:
    """``torch.onnx.export`` (dynamo) of ``module`` in eval mode -> the serialised, checked ``ModelProto``."""
    import onnx

    module = module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
        program = torch.onnx.export(module, args, None, dynamo=True, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=dynamic_shapes, opset_version=OPSET,
                                    verbose=False)
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def export_bavit(model: BAViT, batch: int = 2) -> bytes:
    """``bavit.onnx``: pixels ``[B, 3, S, S]`` -> FG probability ``[B, G, G]`` (an inference copy: BN folded)."""
    cfg = model.config
    example = torch.zeros(batch, 3, cfg.img_size, cfg.img_size)
    inference = model.for_inference()
    return _cached(("bavit", weights_digest(inference), cfg.to_json()), lambda: _export(
        BAViTGraph(inference), (example,), ["pixels"], ["fg_prob"],
        {"pixels": {0: torch.export.Dim("batch", min=1, max=256)}}))


def quantize_matmuls(graph: bytes) -> bytes:
    """``graph`` (ONNX bytes) with its MatMuls quantized to int8 by onnxruntime's dynamic quantization (weights
    int8 per tensor, activations scaled per call by their whole tensor); everything else stays float32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="bavit-int8-") as tmp:
        source, target = Path(tmp) / "float32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(graph)
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # its advice to pre-process the model, logged on the root logger
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        finally:
            logging.disable(previous)
        return target.read_bytes()


def quantize_static_qdq(graph: bytes, inputs: Sequence[dict[str, np.ndarray]],
                        op_types: Optional[Sequence[str]] = None) -> bytes:
    """``graph`` (ONNX bytes) statically quantized by onnxruntime's ``quantize_static``: QDQ nodes around ``op_types``
    (default: every op it can quantize), int8 weights per channel and uint8 activations whose fixed ranges are the
    min and max seen on ``inputs`` (feeds of the graph, one call each)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(inputs)

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory(prefix="bavit-qdq-") as tmp:
        source, target = Path(tmp) / "float32.onnx", Path(tmp) / "qdq.onnx"
        source.write_bytes(graph)
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(source, target, Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                **({"op_types_to_quantize": list(op_types)} if op_types else {}))
        finally:
            logging.disable(previous)
        return target.read_bytes()


def quantize_bavit(model: BAViT) -> bytes:
    """``bavit_int8.onnx``: :func:`export_bavit` with its MatMuls (the transformer blocks and the head) quantized to
    int8 (:func:`quantize_matmuls`); the convolutional stem stays float32 (quantizing it was slower).

    Faster than torch at nearly the same token accuracy; both are measured in docs/results.md, "Token accounting
    (paper Table 2, Eq. 4) and measured speed-up" (``python -m bavit bench``, column "BAViT ms"; ``python -m bavit evaluate
    --backend onnxruntime`` against ``--backend torch``)."""
    inference = model.for_inference()
    return _cached(("bavit_int8", weights_digest(inference), model.config.to_json()),
                   lambda: quantize_matmuls(export_bavit(model)))


def export_pruned_yolos(detector, image_size: int = YOLOS_SIZE) -> bytes:
    """``yolos_pruned.onnx``: ``(pixel_values [1, 3, H, W], keep_index int64 [K]) -> (logits, pred_boxes)``."""
    grid = yolos_grid(detector.config.patch_size, image_size)
    cells = grid * grid
    example = (torch.zeros(1, 3, image_size, image_size), torch.arange(0, cells, 2, dtype=torch.int64))
    key = ("yolos_pruned", weights_digest(detector), detector.config.to_json_string(), image_size)
    return _cached(key, lambda: _export(
        PrunedYolosGraph(detector), example, ["pixel_values", "keep_index"],
        ["logits", "pred_boxes"], {"pixels": None, "keep_index": {0: torch.export.Dim("kept", min=1, max=cells)}}))


def export_dense_yolos(detector, image_size: int = YOLOS_SIZE) -> bytes:
    """``yolos_dense.onnx``: ``pixel_values [B, 3, H, W] -> (logits, pred_boxes)``, the unmodified model."""
    example = torch.zeros(2, 3, image_size, image_size)
    key = ("yolos_dense", weights_digest(detector), detector.config.to_json_string(), image_size)
    return _cached(key, lambda: _export(DenseYolosGraph(detector), (example,), ["pixel_values"],
                                        ["logits", "pred_boxes"],
                                        {"pixels": {0: torch.export.Dim("batch", min=1, max=256)}}))


def quantize_yolos(detector, image_size: int = YOLOS_SIZE) -> tuple[bytes, bytes]:
    """``(yolos_pruned_int8.onnx, yolos_dense_int8.onnx)``: :func:`export_pruned_yolos` and
    :func:`export_dense_yolos` with int8 MatMuls (:func:`quantize_matmuls`): the practitioner's quantized detector,
    the ``onnxruntime-int8`` backend. Its agreement with float32 is all that can be measured here (random weights
    without the hub): ``python -m bavit bench --backend onnxruntime onnxruntime-int8``."""
    key = (weights_digest(detector), detector.config.to_json_string(), image_size)
    pruned = _cached(("yolos_pruned_int8", *key), lambda: quantize_matmuls(export_pruned_yolos(detector, image_size)))
    dense = _cached(("yolos_dense_int8", *key), lambda: quantize_matmuls(export_dense_yolos(detector, image_size)))
    return pruned, dense


def _recipe(model) -> tuple:
    """What rebuilds ``model`` in another process: BAViT pickles as it is; a patched YOLOS (its class is made at
    patch time, :func:`~bavit.pruning.yolos.patch_yolos`) goes as config, weights and batch mode."""
    if isinstance(model, BAViT):
        return ("bavit", model)
    return ("yolos", (model.config.to_dict(), model.state_dict(), model.pruned_batch_mode))


def _rebuild(recipe: tuple):
    kind, payload = recipe
    if kind == "bavit":
        return payload
    from transformers import YolosConfig, YolosForObjectDetection

    config, state, batch_mode = payload
    model = YolosForObjectDetection(YolosConfig.from_dict(config))
    model.load_state_dict(state)
    return patch_yolos(model, batch_mode).eval()


GRAPH_FUNCTIONS = ("export_bavit", "quantize_bavit", "export_pruned_yolos", "export_dense_yolos", "quantize_yolos")


class ExportProcess:
    """A child Python process that makes exports (:data:`GRAPH_FUNCTIONS`) one call at a time, so their seconds of
    pure-Python tracing do not hold this process' GIL (a server's warm-up exports while it answers requests). Its
    graphs are the ones made in this process (the same nodes and weights; only the nodes' trace metadata differs).
    It imports torch and warms the exporter once for all its calls; what it prints goes to a temporary file (its
    last lines explain a failure). Close it (or use it in a ``with`` block) when done.
    """

    def __init__(self):
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self._log = tempfile.TemporaryFile()  # not a pipe: a child writing more than it holds would block
        self._process = subprocess.Popen([sys.executable, "-m", "bavit.deploy.export"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._log, env=env)
        self._lock = threading.Lock()

    def __call__(self, function, model, *args):
        """``function(model, *args)`` in the child.

        Raises:
            RuntimeError: the child failed (its message says why).
        """
        if function.__name__ not in GRAPH_FUNCTIONS:
            raise ValueError(f"not an export function: {function.__name__}")
        with self._lock:
            try:
                pickle.dump((function.__name__, _recipe(model), args), self._process.stdin)
                self._process.stdin.flush()
                ok, result = pickle.load(self._process.stdout)
            except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:  # it ended, or was closed
                self.close()
                self._log.seek(0)
                tail = self._log.read().decode(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"the export process ended ({exc.__class__.__name__}): {' / '.join(tail)}") from None
        if not ok:
            raise RuntimeError(f"the export process failed: {result}")
        return result

    def close(self) -> None:
        """End the child (it exits when its input closes)."""
        if self._process.stdin and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except OSError:
                pass
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()

    def __enter__(self) -> "ExportProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _child_main() -> None:
    """:class:`ExportProcess`'s other end: pickled calls on stdin, ``(ok, result or message)`` pickled on stdout,
    until stdin closes."""
    calls, answers = sys.stdin.buffer, os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a library's print goes to the log, not into the answers
    while True:
        try:
            name, recipe, args = pickle.load(calls)
        except EOFError:
            return
        try:
            if name not in GRAPH_FUNCTIONS:
                raise ValueError(f"not an export function: {name}")
            answer = (True, globals()[name](_rebuild(recipe), *args))
        except Exception as exc:  # the parent raises it; this process stays up for the next call
            answer = (False, f"{exc.__class__.__name__}: {exc}")
        pickle.dump(answer, answers)
        answers.flush()


def check_out_dir(out: str | os.PathLike, what: str = "export folder") -> Path:
    """Refuse ``out`` (:class:`~bavit.errors.ConfigError`) unless an export can be written there without deleting
    anything else: it is new, or an empty folder, or an earlier export holding nothing but :data:`WRITTEN` (it is
    replaced whole); never a file, a link, the current folder, or a folder where nothing can be created."""
    return check_output_dir(out, what, replace=True, manifest=MANIFEST, names=WRITTEN)


def manifest_text(manifest: dict) -> str:
    """``export.json``'s text, strict JSON (NaN or infinity: :class:`CheckpointError`)."""
    try:
        return json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise CheckpointError(f"cannot write {MANIFEST}: a setting of the checkpoint or the detector is not a finite "
                              "number (NaN or infinity)") from None


def export_all(out: str | os.PathLike, bavit: BAViT, detector, *, bavit_source: str, detector_source: str,
               detector_pretrained: bool, calibration: Optional[dict] = None, image_size: int = YOLOS_SIZE,
               processor_stats: Optional[tuple] = None) -> dict:
    """Write the three graphs, ``export.json`` and a README into ``out`` (atomically: all or nothing).

    ``out`` must pass :func:`check_out_dir` (checked first, and again at the swap: only an earlier export's files
    are ever deleted). Returns the manifest (``export.json``'s content)."""
    from ..pruning.detector import YOLOS_MEAN, YOLOS_STD
    from ..pruning.keep_mask import DEFAULT_CCA_STEPS

    out = check_out_dir(out)
    cfg = bavit.config
    mean, std = processor_stats or (YOLOS_MEAN, YOLOS_STD)
    manifest = {
        "files": FILES,
        "opset": OPSET,
        "torch": torch.__version__,
        "bavit": {"source": bavit_source, "config": json.loads(cfg.to_json()),
                  "input": [None, 3, cfg.img_size, cfg.img_size],
                  "mean": list(cfg.mean), "std": list(cfg.std), "grid": cfg.grid_size,
                  "calibration": calibration},
        "detector": {"source": detector_source, "pretrained": bool(detector_pretrained),
                     "note": ("pretrained weights" if detector_pretrained else
                              "YOLOS-tiny ARCHITECTURE AT RANDOM INIT: no detector weights were available, so these "
                              "graphs are for latency and plumbing only; their detections mean nothing. Re-export "
                              "with --detector hustvl/yolos-tiny (or a save_pretrained directory) where the hub is "
                              "reachable."),
                     "input": [1, 3, image_size, image_size], "mean": list(mean), "std": list(std),
                     "grid": yolos_grid(detector.config.patch_size, image_size),
                     "num_detection_tokens": detector.config.num_detection_tokens,
                     "id2label": {str(k): v for k, v in detector.config.id2label.items()}},
        "keep_mask": {"cca_steps": DEFAULT_CCA_STEPS, "resample": "nearest",
                      "rule": "keep a BAViT cell when fg_prob >= threshold; CCA: a kept-out cell with more than 2 kept "
                              "cells among its 8 neighbours is kept, cca_steps times; nearest 24 -> 32 resample; "
                              "keep_index = flat indices of the kept 32x32 cells, ascending"},
    }
    text = manifest_text(manifest)  # a NaN fails before the graphs, not after
    blobs = {FILES["bavit"]: export_bavit(bavit), FILES["bavit_int8"]: quantize_bavit(bavit),
             FILES["yolos_pruned"]: export_pruned_yolos(detector, image_size),
             FILES["yolos_dense"]: export_dense_yolos(detector, image_size)}
    with atomic_dir(out, owned=WRITTEN, marker=MANIFEST) as tmp:
        for name, blob in blobs.items():
            (tmp / name).write_bytes(blob)
        (tmp / MANIFEST).write_text(text)
        (tmp / README).write_text(_readme(manifest))
    return manifest


def _readme(manifest: dict) -> str:
    det = manifest["detector"]
    warning = "" if det["pretrained"] else f"\n**Warning: {det['note']}**\n"
    return (f"# BAViT + pruned YOLOS, ONNX (opset {manifest['opset']}, torch {manifest['torch']})\n{warning}\n"
            f"- `bavit.onnx`: BAViT ({manifest['bavit']['source']}), pixels [B, 3, 384, 384] -> fg_prob [B, 24, 24]\n"
            "- `bavit_int8.onnx`: the same with int8 MatMuls (dynamic quantization; what the onnxruntime backend "
            "runs: faster, token accuracy within 0.1 point)\n"
            f"- `yolos_pruned.onnx`: YOLOS ({det['source']}), pixel_values [1, 3, 512, 512] + keep_index int64 [K] -> "
            "logits, pred_boxes\n"
            f"- `yolos_dense.onnx`: the same detector, dense\n\n"
            "Inputs, normalisation, labels, the keep-mask rule and the calibration are in `export.json`. The project's "
            "docs/deployment.md (*Deployment: ONNX and onnxruntime*) runs these files with onnxruntime and numpy alone.\n")


if __name__ == "__main__":
    _child_main()
