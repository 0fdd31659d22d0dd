"""Training state -- optimizer, LR scheduler, progress -- in one safetensors file; the one way train and finetune
save and restore it, exactly: ``optimizer.state_dict()`` and ``scheduler.state_dict()`` come back equal, types
included, for their own ``load_state_dict``, so a resumed run continues bit for bit.

The codec (no pickles: loading runs no code from the file): every tensor (Adam's moments and ``step``, a progress
tensor such as the RNG state or a model's state dict) is a safetensors tensor named by its place
(``optimizer.state.0.exp_avg``); the rest is JSON metadata in which a tensor reads ``{"__tensor__": NAME}`` and the
two things JSON cannot say are tagged: a tuple (``{"__tuple__": [...]}``, Adam's ``betas``) and a dict with int
keys (``{"__intdict__": {...}}``, the per-parameter ``state``, which ``load_state_dict`` matches by int index).
Metadata keys: ``format`` (:data:`FORMAT`), ``optimizer``, ``scheduler`` (when saved), ``progress``, ``params``
(each parameter's shape, per group: a state of another model is refused clearly) and ``torch`` (its version).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..core.checkpoint import FORMAT_KEY, read_safetensors, write_safetensors
from ..errors import CheckpointError

FORMAT = "bavit-training-state-v1"
_TENSOR, _TUPLE, _INTDICT = "__tensor__", "__tuple__", "__intdict__"


def _encode(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON data; its tensors move to ``tensors`` under their dotted place ``name``."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            raise TypeError(f"training state: {name} is a {value.layout} tensor; safetensors stores dense ones only")
        if name in tensors:
            raise ValueError(f"training state: two values map to the tensor name {name!r}")
        # a contiguous CPU copy of its own: safetensors refuses tensors that share memory
        tensors[name] = value.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        return {_TENSOR: name}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{name}.{i}", tensors) for i, v in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        int_keys = bool(value) and all(type(k) is int for k in value)
        if not int_keys and not all(isinstance(k, str) for k in value):
            raise TypeError(f"training state: {name} is a dict with keys that are neither all str nor all int")
        items = {str(k): _encode(v, f"{name}.{k}", tensors) for k, v in value.items()}
        return {_INTDICT: items} if int_keys else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"training state: {name} is a {type(value).__name__}, which cannot be stored without pickling")


def _decoder(tensors: dict[str, torch.Tensor]):
    """``json.loads`` object hook that undoes :func:`_encode`'s tags."""
    def hook(obj: dict) -> Any:
        if len(obj) == 1:
            (key, value), = obj.items()
            if key == _TENSOR:
                return tensors[value]
            if key == _TUPLE:
                return tuple(value)
            if key == _INTDICT:
                return {int(k): v for k, v in value.items()}
        return obj
    return hook


def _param_shapes(optimizer: torch.optim.Optimizer) -> list[list[list[int]]]:
    """Per parameter group, the shape of each of its parameters (in the order ``state_dict`` numbers them)."""
    return [[list(p.shape) for p in group["params"]] for group in optimizer.param_groups]


def save_training_state(path: str | os.PathLike, optimizer: torch.optim.Optimizer, scheduler: Any = None, /,
                        **progress: Any) -> Path:
    """Write ``optimizer.state_dict()``, ``scheduler.state_dict()`` (an LR scheduler or None) and ``progress``
    (JSON-able values and tensors: epoch, step, RNG state, ...) to ``path`` atomically
    (:func:`bavit.core.checkpoint.write_safetensors`); returns ``Path(path)``.

    Raises:
        TypeError: a value that is neither JSON-able nor a dense tensor (e.g. a callable or a sparse tensor);
            nothing is written then.
    """
    tensors: dict[str, torch.Tensor] = {}
    metadata = {FORMAT_KEY: FORMAT, "torch": torch.__version__, "params": json.dumps(_param_shapes(optimizer)),
                "optimizer": json.dumps(_encode(optimizer.state_dict(), "optimizer", tensors)),
                "progress": json.dumps(_encode(progress, "progress", tensors))}
    if scheduler is not None:
        metadata["scheduler"] = json.dumps(_encode(scheduler.state_dict(), "scheduler", tensors))
    return write_safetensors(path, tensors, metadata)


class TrainingState(NamedTuple):
    """A training state as read from its file (:func:`read_training_state`); :meth:`restore` applies it."""

    optimizer: dict  # the saved optimizer.state_dict()
    scheduler: dict | None  # the saved scheduler.state_dict(), or None
    progress: dict
    shapes: list[list[list[int]]]  # per parameter group, each parameter's shape
    path: Path

    def restore(self, optimizer: torch.optim.Optimizer, scheduler: Any = None) -> dict:
        """Load the saved state into ``optimizer`` (and ``scheduler``); returns the progress.

        ``optimizer`` must be built over the same parameters, in the same order and groups, as the one that was
        saved (a fresh optimizer with default settings is fine: the saved ``param_groups`` replace its settings).
        Create the scheduler before: its constructor writes ``initial_lr`` into the groups, which this overrides.
        Afterwards ``optimizer.state_dict()`` and ``scheduler.state_dict()`` equal the saved ones.

        Raises:
            CheckpointError: a state for other parameters (count, grouping or shapes), or one without scheduler
                state when a scheduler is given.
        """
        shapes = _param_shapes(optimizer)
        if self.shapes != shapes:
            saved, here = [s for g in self.shapes for s in g], [s for g in shapes for s in g]
            if len(saved) == len(here) and saved != here:
                index = next(i for i, (a, b) in enumerate(zip(saved, here)) if a != b)
                detail = f"parameter {index} has shape {saved[index]} there but {here[index]} here"
            else:
                detail = (f"it holds {len(saved)} parameters in {len(self.shapes)} group(s) of "
                          f"{[len(g) for g in self.shapes]}, this optimizer has {len(here)} in {len(shapes)} of "
                          f"{[len(g) for g in shapes]}")
            raise CheckpointError(f"{self.path} is the training state of another model: {detail}")
        if scheduler is not None and self.scheduler is None:
            raise CheckpointError(f"{self.path} holds no LR-scheduler state")
        try:
            optimizer.load_state_dict(self.optimizer)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{self.path}: the optimizer state does not fit this optimizer ({exc})") from None
        if scheduler is not None:
            scheduler.load_state_dict(self.scheduler)
        return self.progress


def read_training_state(path: str | os.PathLike) -> TrainingState:
    """The state a file written by :func:`save_training_state` holds, without touching any optimizer.

    Raises:
        CheckpointError: missing file, not a safetensors file, not a training state, or a damaged one.
    """
    path = Path(path)
    metadata, tensors = read_safetensors(path, "training state")
    if metadata.get(FORMAT_KEY) != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a training state "
                              f"(its '{FORMAT_KEY}' metadata is {metadata.get(FORMAT_KEY)!r}, not {FORMAT!r})")
    hook = _decoder(tensors)
    try:
        return TrainingState(
            json.loads(metadata["optimizer"], object_hook=hook),
            json.loads(metadata["scheduler"], object_hook=hook) if "scheduler" in metadata else None,
            json.loads(metadata["progress"], object_hook=hook), json.loads(metadata["params"]), path)
    except (KeyError, ValueError, TypeError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
        raise CheckpointError(f"{path}: damaged training state ({exc.__class__.__name__}: {exc})") from None


def load_training_state(path: str | os.PathLike, optimizer: torch.optim.Optimizer, scheduler: Any = None) -> dict:
    """Restore ``optimizer`` (and ``scheduler``) from ``path``; returns the saved progress
    (:func:`read_training_state`, then :meth:`TrainingState.restore`)."""
    return read_training_state(path).restore(optimizer, scheduler)


__all__ = ["FORMAT", "TrainingState", "load_training_state", "read_training_state", "save_training_state"]
