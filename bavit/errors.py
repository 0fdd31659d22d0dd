"""User-facing errors: each names the problem in one sentence, so the CLI and app can show it without a traceback."""


class BAViTError(Exception):
    """Base class for errors that are the user's input, not a bug."""


class DataError(BAViTError):
    """Missing or corrupt images, bad annotations, unusable dataset paths."""


class CheckpointError(BAViTError):
    """A checkpoint that is missing, not ours, or built for another architecture."""


class ConfigError(BAViTError, ValueError):
    """An invalid model or run configuration (for example an input size that is not a multiple of the patch)."""


class WeightsUnavailableError(BAViTError):
    """Pretrained weights that cannot be had here (offline hub, missing directory)."""
