"""BAViT Explorer: background-aware token pruning for vision transformers (Sah et al., BAViT)."""
from .core.cca import cca, resample_grid
from .core.checkpoint import Checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
from .core.config import BAViTConfig
from .core.labels import labels_from_boxes, labels_from_mask
from .core.loss import AccumulativeCrossEntropy
from .core.model import BAViT, build_bavit
from .errors import BAViTError, CheckpointError, ConfigError, DataError, WeightsUnavailableError
from .predictor import Analysis, PreparedImage, Predictor, build_predictor
from .pruning.settings import PruningSettings

__all__ = [
    "Analysis",
    "BAViT",
    "BAViTConfig",
    "AccumulativeCrossEntropy",
    "BAViTError",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "PreparedImage",
    "Predictor",
    "PruningSettings",
    "WeightsUnavailableError",
    "build_bavit",
    "build_predictor",
    "cca",
    "labels_from_boxes",
    "labels_from_mask",
    "load_checkpoint",
    "read_checkpoint",
    "resample_grid",
    "save_checkpoint",
]
