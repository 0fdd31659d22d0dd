"""Build a :class:`~bavit.predictor.Predictor` by config preset name, like SAM's ``sam_model_registry``: the
presets are :data:`bavit.core.config.PRESETS`, their shipped checkpoints :data:`bavit.core.registry.SHIPPED`."""
from __future__ import annotations

import os
from typing import Union

from .core.checkpoint import read_checkpoint
from .core.config import PRESETS
from .core.registry import NOT_SHIPPED, SHIPPED
from .errors import CheckpointError, ConfigError
from .predictor import Predictor
from .pruning.calibration import Calibration
from .pruning.detector import DEFAULT_DETECTOR


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


__all__ = ["build_predictor"]
