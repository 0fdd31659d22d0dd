"""BAViT checkpoints (nanoGPT-style): one safetensors file holds the weights, the :class:`BAViTConfig` they were
built with, the training record and provenance (``extra``) and, once calibrated, the sparsity calibration -- so
loading needs only the path, and :func:`read_checkpoint` reads all of it in one pass.

Metadata keys: ``format`` (:data:`FORMAT`), ``bavit_config`` (the config as JSON), ``extra`` (JSON: epoch, loss,
``train_image_ids``, ``init_weights``, ...) and ``calibration`` (JSON that
:meth:`bavit.pruning.calibration.Calibration.from_checkpoint` parses; this module does not interpret it).

:func:`read_safetensors` and :func:`write_safetensors` are the one way a safetensors file is read (one open, clear
errors) and written (atomically, :func:`bavit.files.atomic_path`), also for the training state
(:mod:`bavit.engine.state`). No pickles anywhere: loading runs no code from the file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..files import atomic_path
from .config import BAViTConfig
from .model import BAViT

FORMAT_KEY = "format"
FORMAT = "bavit-v1"
CONFIG_KEY = "bavit_config"
EXTRA_KEY = "extra"
CALIBRATION_KEY = "calibration"
MAX_JSON_DEPTH = 32  # nesting of a JSON metadata entry (the project writes 3 levels at most)


def _depth(data) -> int:
    """How deeply ``data`` (parsed JSON) nests lists and objects; iterative, so any depth is safe to measure."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, level)
            stack.extend((item, level + 1) for item in (value.values() if isinstance(value, dict) else value))
    return deepest


def _json_object(path: Path, key: str, text: str) -> dict:
    """The JSON object stored under metadata ``key``, or a one-line :class:`CheckpointError`: not JSON, not an
    object, or nested deeper than :data:`MAX_JSON_DEPTH` (JSON thousands of levels deep makes the parser or
    whatever walks the result later raise RecursionError)."""
    try:
        data = json.loads(text)
    except RecursionError:
        data = None
    except ValueError as exc:
        raise CheckpointError(f"{path}: stored '{key}' metadata is not valid JSON ({exc})") from None
    if data is None or _depth(data) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path}: stored '{key}' metadata is nested more than {MAX_JSON_DEPTH} levels deep; "
                              "not a BAViT checkpoint's")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: stored '{key}' metadata is not a JSON object")
    return data


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` (contiguous, no two sharing memory) and string ``metadata`` to ``path`` atomically: a
    temp file in the same folder (created if needed) renamed onto ``path``; on failure ``path`` is untouched."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # mode 0644: meant to be shared
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_safetensors(path: str | os.PathLike, kind: str,
                     device: str = "cpu") -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a safetensors file, read in one open.

    Raises:
        CheckpointError: no file at ``path`` ("no {kind} at ...") or not a readable safetensors file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {kind} at {path}")
    try:
        with safe_open(str(path), framework="pt", device=device) as handle:
            return handle.metadata() or {}, {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None


@dataclass(frozen=True)
class Checkpoint:
    """What a BAViT checkpoint file holds (:func:`read_checkpoint`).

    Attributes:
        path: the file.
        model: the BAViT with its weights, in eval mode; ``model.config`` is the stored config.
        extra: the training record and provenance saved with it (``epoch``, ``train_image_ids``, ``init_weights``,
            ...); ``{}`` when none.
        calibration: the stored calibration as JSON data, or None; parse it with
            :meth:`bavit.pruning.calibration.Calibration.from_checkpoint`.
    """

    path: Path
    model: BAViT
    extra: dict
    calibration: dict | None = None

    @property
    def config(self) -> BAViTConfig:
        return self.model.config


def save_checkpoint(model: BAViT, path: str | os.PathLike, extra: dict | None = None,
                    calibration: dict | None = None) -> Path:
    """Write weights + config (+ ``extra``, + ``calibration``) to ``path`` atomically (:func:`write_safetensors`).

    Args:
        model: the model (a DDP wrapper's ``.module``); not a :meth:`~bavit.core.model.BAViT.for_inference` copy.
        path: target ``.safetensors`` file.
        extra: JSON-serialisable training record and provenance (epoch, metrics, ``train_image_ids``).
        calibration: JSON data of a calibration (``Calibration.to_dict()``), e.g. a read checkpoint's own.
    """
    if getattr(model, "inference_only", False):
        raise CheckpointError("this BAViT was prepared with for_inference() (fused layers); save the original model")
    metadata = {FORMAT_KEY: FORMAT, CONFIG_KEY: model.config.to_json()}
    for key, value in ((EXTRA_KEY, extra), (CALIBRATION_KEY, calibration)):
        if value:
            metadata[key] = json.dumps(value, sort_keys=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    return write_safetensors(path, state, metadata)


def read_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> Checkpoint:
    """Everything a BAViT checkpoint holds, from one read of the file; the architecture comes from its config.

    Raises:
        CheckpointError: a missing or unreadable file, one that is not a BAViT checkpoint, an invalid stored config
            (:class:`~bavit.core.config.BAViTConfig`'s checks), a JSON entry that is not an object or nests more
            than :data:`MAX_JSON_DEPTH` levels, weights that do not fit the stored config, or weights that are not
            finite. Nothing else: any broken file is this one-line error.
    """
    path = Path(path)
    metadata, state = read_safetensors(path, "BAViT checkpoint", map_location)
    if CONFIG_KEY not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a BAViT checkpoint (no '{CONFIG_KEY}' metadata)")
    try:
        config = BAViTConfig.from_json(metadata[CONFIG_KEY])
    except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
        raise CheckpointError(f"{path}: stored config is invalid ({exc})") from None
    extra = _json_object(path, EXTRA_KEY, metadata[EXTRA_KEY]) if EXTRA_KEY in metadata else {}
    calibration = (_json_object(path, CALIBRATION_KEY, metadata[CALIBRATION_KEY]) if CALIBRATION_KEY in metadata
                   else None)
    model = BAViT(config)
    expected = model.state_dict()
    problems = {
        "missing": sorted(set(expected) - set(state)),
        "unexpected": sorted(set(state) - set(expected)),
        "shape mismatch": sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape),
    }
    if any(problems.values()):
        detail = "; ".join(f"{what} {names[:3]}" for what, names in problems.items() if names)
        raise CheckpointError(f"{path} does not match its stored config ({config.name}, depth {config.depth}): {detail}")
    for name, tensor in state.items():  # NaN or infinite weights give NaN probabilities everywhere
        values = None if tensor.is_complex() else tensor.to(torch.float32)  # as the model will hold them
        if values is None or not bool(torch.isfinite(values).all()):
            raise CheckpointError(f"{path}: weight {name} holds NaN, infinite or complex values")
        if name.endswith("running_var") and bool((values < 0).any()):  # folded as sqrt(var + eps): NaN
            raise CheckpointError(f"{path}: weight {name} (a variance) holds negative values")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # a dtype that cannot be copied into float32 weights
        raise CheckpointError(f"{path}: its weights cannot be loaded ({str(exc).splitlines()[0]})") from None
    return Checkpoint(path, model.eval(), extra, calibration)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> BAViT:
    """The BAViT of a checkpoint, in eval mode, from its path alone (:func:`read_checkpoint`'s ``model``)."""
    return read_checkpoint(path, map_location).model


__all__ = ["Checkpoint", "FORMAT", "read_checkpoint", "load_checkpoint", "save_checkpoint", "read_safetensors",
           "write_safetensors"]
