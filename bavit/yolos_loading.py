"""Load a YOLOS detector the ordinary way (hub id or local directory) with clear errors when it cannot be had."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError, WeightsUnavailableError

DEFAULT_DETECTOR = "hustvl/yolos-tiny"

HOW_TO_GET_WEIGHTS = (
    "Download them on a machine with internet access: "
    "`python -c \"from transformers import YolosForObjectDetection, YolosImageProcessor; "
    "YolosForObjectDetection.from_pretrained('hustvl/yolos-tiny').save_pretrained('yolos-tiny'); "
    "YolosImageProcessor.from_pretrained('hustvl/yolos-tiny').save_pretrained('yolos-tiny')\"`, "
    "then pass --detector yolos-tiny (or set BAVIT_DETECTOR=yolos-tiny)."
)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """One quick TCP connect to the configured hub endpoint, so an offline machine fails in seconds, not retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout_s):
            return True
    except OSError:
        return False


def load_yolos_model(id_or_dir: str | os.PathLike):
    """``YolosForObjectDetection.from_pretrained`` on a hub id or a local directory.

    Raises:
        WeightsUnavailableError: the directory is missing, or the hub cannot be reached.
        ValueError: the checkpoint is not a YOLOS model.
    """
    from transformers import AutoConfig

    source = str(id_or_dir)
    looks_local = source.startswith((".", "/", "~")) or os.path.sep in source.rstrip("/").split("/", 1)[-1] or Path(source).exists()
    if looks_local and not Path(source).expanduser().is_dir():
        raise WeightsUnavailableError(f"detector directory not found: {source}. {HOW_TO_GET_WEIGHTS}")
    if not looks_local:
        try:  # already in the local cache: no network needed
            config = AutoConfig.from_pretrained(source, local_files_only=True)
            return _load_weights(source, config, local_files_only=True)
        except OSError:
            pass
        if not _hub_reachable():
            raise WeightsUnavailableError(
                f"detector {source!r} is not in the local cache and the Hugging Face hub cannot be reached. "
                + HOW_TO_GET_WEIGHTS
            )
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise WeightsUnavailableError(
            f"could not load detector {source!r}: the Hugging Face hub is unreachable or the id is wrong ({exc.__class__.__name__}). "
            + HOW_TO_GET_WEIGHTS
        ) from None
    return _load_weights(source, config)


def _load_weights(source: str, config, local_files_only: bool = False):
    from transformers import YolosForObjectDetection

    if config.model_type != "yolos":
        raise ConfigError(f"{source} is a {config.model_type!r} model, not YOLOS")
    try:
        return YolosForObjectDetection.from_pretrained(source, attn_implementation="sdpa",
                                                       local_files_only=local_files_only).eval()
    except OSError as exc:
        if local_files_only:
            raise
        raise WeightsUnavailableError(f"could not load detector weights from {source!r} ({exc}). {HOW_TO_GET_WEIGHTS}") from None
