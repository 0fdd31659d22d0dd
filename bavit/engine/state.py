"""Training state -- optimizer, LR scheduler, progress -- in one safetensors file; the one way train and finetune
save and restore it.

What is stored is exactly ``optimizer.state_dict()`` and ``scheduler.state_dict()``, restored with their own
``load_state_dict`` as torch intends, so a resumed run continues bit for bit:

* every tensor (Adam's ``exp_avg`` / ``exp_avg_sq`` with the parameter's shape and dtype, its 0-d ``step``, a tensor
  learning rate, tensors passed as progress such as ``torch.get_rng_state()``) is a safetensors tensor named by
  its place in the state dict: ``state.{param_index}.{name}``, ``param_groups.{group}.{key}``,
  ``scheduler.{key}``, ``progress.{key}``;
* everything else (``param_groups`` with lr / betas / eps / weight decay, non-tensor state values, the scheduler's
  state, the progress such as epoch and step) is JSON in the safetensors metadata. Tuples, dicts with integer
  keys and tensors are tagged (``{"__tuple__": [...]}``, ``{"__intdict__": {...}}``, ``{"__tensor__": NAME}``)
  so the decoded state dicts equal the saved ones, types included.

No pickles: loading a training state runs no code from the file. The file is written atomically
(:func:`bavit.files.atomic_path`). Metadata keys: ``format`` (:data:`FORMAT`), ``optimizer``, ``scheduler``
(when one was saved), ``progress``, ``params`` (the shape of every parameter, per group, to reject a state
saved for another model with a clear error) and ``torch`` (the version that wrote it, for information).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..files import atomic_path

FORMAT_KEY = "format"
FORMAT = "bavit-training-state-v1"
_TENSOR, _TUPLE, _INTDICT = "__tensor__", "__tuple__", "__intdict__"


def _join(prefix: str, key: object) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _encode(value: Any, name: str, tensors: dict[str, torch.Tensor], seen: set[int]) -> Any:
    """``value`` as JSON-able data; its tensors move to ``tensors`` under dotted names starting with ``name``."""
    if isinstance(value, torch.Tensor):
        if name in tensors:
            raise ValueError(f"training state: two values map to the tensor name {name!r}")
        if value.layout != torch.strided:
            raise TypeError(f"training state: {name} is a {value.layout} tensor; safetensors stores dense ones only")
        tensor = value.detach().cpu().contiguous()
        if tensor.data_ptr() in seen and tensor.numel() > 0:
            tensor = tensor.clone()  # safetensors refuses tensors that share memory
        seen.add(tensor.data_ptr())
        tensors[name] = tensor
        return {_TENSOR: name}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, _join(name, i), tensors, seen) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, _join(name, i), tensors, seen) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _encode(v, _join(name, k), tensors, seen) for k, v in value.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in value):
            return {_INTDICT: {str(k): _encode(v, _join(name, k), tensors, seen) for k, v in value.items()}}
        raise TypeError(f"training state: {name or 'the state'} is a dict with keys that are neither all str nor all int")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"training state: {name} is a {type(value).__name__}, which cannot be stored without pickling")


def _decoder(tensors: dict[str, torch.Tensor]):
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
    """Write ``optimizer.state_dict()``, ``scheduler.state_dict()`` and ``progress`` to ``path`` atomically.

    Args:
        path: the ``.safetensors`` file to write (its folder is created).
        optimizer: any ``torch.optim.Optimizer``.
        scheduler: an LR scheduler (anything with ``state_dict`` / ``load_state_dict``), or None.
        progress: JSON-able values (epoch, step, settings, ...) and tensors, returned by :func:`load_training_state`.
    Returns:
        ``Path(path)``.
    Raises:
        TypeError: a value that is neither JSON-able nor a dense tensor (e.g. a callable or a sparse tensor);
            nothing is written then.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    metadata = {
        FORMAT_KEY: FORMAT,
        "optimizer": json.dumps(_encode(optimizer.state_dict(), "", tensors, seen)),
        "progress": json.dumps(_encode(progress, "progress", tensors, seen)),
        "params": json.dumps(_param_shapes(optimizer)),
        "torch": torch.__version__,
    }
    if scheduler is not None:
        metadata["scheduler"] = json.dumps(_encode(scheduler.state_dict(), "scheduler", tensors, seen))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_training_state(path: str | os.PathLike) -> tuple[dict, dict | None, dict, list[list[list[int]]]]:
    """``(optimizer state dict, scheduler state dict or None, progress, parameter shapes per group)`` from a file
    written by :func:`save_training_state`, without touching any optimizer.

    Raises:
        CheckpointError: missing file, not a safetensors file, not a training state, or a damaged one.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training state at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get(FORMAT_KEY) != FORMAT:
                raise CheckpointError(f"{path} is a safetensors file but not a training state "
                                      f"(its '{FORMAT_KEY}' metadata is {metadata.get(FORMAT_KEY)!r}, not {FORMAT!r})")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    hook = _decoder(tensors)
    try:
        optimizer_state = json.loads(metadata["optimizer"], object_hook=hook)
        scheduler_state = json.loads(metadata["scheduler"], object_hook=hook) if "scheduler" in metadata else None
        progress = json.loads(metadata["progress"], object_hook=hook)
        shapes = json.loads(metadata["params"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged training state ({exc.__class__.__name__}: {exc})") from None
    return optimizer_state, scheduler_state, progress, shapes


def load_training_state(path: str | os.PathLike, optimizer: torch.optim.Optimizer, scheduler: Any = None) -> dict:
    """Restore ``optimizer`` (and ``scheduler``) from ``path``; returns the saved progress.

    ``optimizer`` must be built over the same parameters, in the same order and groups, as the one that was saved
    (a fresh optimizer with default settings is fine: the saved ``param_groups`` replace its settings). Create the
    scheduler before loading: its constructor writes ``initial_lr`` into the groups, which the load then overrides.
    Afterwards ``optimizer.state_dict()`` and ``scheduler.state_dict()`` equal the saved ones.

    Raises:
        CheckpointError: missing / unreadable / foreign file, a state for other parameters (count or shapes), or
            a file without scheduler state when a scheduler is given.
    """
    path = Path(path)
    optimizer_state, scheduler_state, progress, saved_shapes = read_training_state(path)
    shapes = _param_shapes(optimizer)
    if saved_shapes != shapes:
        saved_count, count = sum(map(len, saved_shapes)), sum(map(len, shapes))
        if len(saved_shapes) != len(shapes) or saved_count != count:
            detail = (f"it holds {saved_count} parameters in {len(saved_shapes)} group(s), this optimizer has "
                      f"{count} in {len(shapes)}")
        else:
            flat_saved = [s for group in saved_shapes for s in group]
            flat = [s for group in shapes for s in group]
            index = next(i for i, (a, b) in enumerate(zip(flat_saved, flat)) if a != b)
            detail = f"parameter {index} has shape {flat_saved[index]} there but {flat[index]} here"
        raise CheckpointError(f"{path} is the training state of another model: {detail}")
    if scheduler is not None and scheduler_state is None:
        raise CheckpointError(f"{path} holds no LR-scheduler state")
    try:
        optimizer.load_state_dict(optimizer_state)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: the optimizer state does not fit this optimizer ({exc})") from None
    if scheduler is not None:
        scheduler.load_state_dict(scheduler_state)
    return progress


__all__ = ["FORMAT", "load_training_state", "read_training_state", "save_training_state"]
