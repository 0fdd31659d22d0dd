"""Load a YOLOS detector the ordinary way (hub id or local directory) with clear errors when it cannot be had."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import WeightsUnavailableError

DEFAULT_DETECTOR = "hustvl/yolos-tiny"

HOW_TO_GET_WEIGHTS = (
    "Download them on a machine with internet access: "
    "`python -c \"from transformers import YolosForObjectDetection, YolosImageProcessor; "
    "YolosForObjectDetection.from_pretrained('hustvl/yolos-tiny').save_pretrained('yolos-tiny'); "
    "YolosImageProcessor.from_pretrained('hustvl/yolos-tiny').save_pretrained('yolos-tiny')\"`, "
    "then pass --detector yolos-tiny (or set BAVIT_DETECTOR=yolos-tiny)."
)


def load_yolos_model(id_or_dir: str | os.PathLike):
    """``YolosForObjectDetection.from_pretrained`` on a hub id or a local directory.

    Raises:
        WeightsUnavailableError: the directory is missing, or the hub cannot be reached.
        ValueError: the checkpoint is not a YOLOS model.
    """
    from transformers import AutoConfig, YolosForObjectDetection

    source = str(id_or_dir)
    looks_local = source.startswith((".", "/", "~")) or os.path.sep in source.rstrip("/").split("/", 1)[-1] or Path(source).exists()
    if looks_local and not Path(source).expanduser().is_dir():
        raise WeightsUnavailableError(f"detector directory not found: {source}. {HOW_TO_GET_WEIGHTS}")
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise WeightsUnavailableError(
            f"could not load detector {source!r}: the Hugging Face hub is unreachable or the id is wrong ({exc.__class__.__name__}). "
            + HOW_TO_GET_WEIGHTS
        ) from None
    if config.model_type != "yolos":
        raise ValueError(f"{source} is a {config.model_type!r} model, not YOLOS")
    try:
        return YolosForObjectDetection.from_pretrained(source, attn_implementation="sdpa").eval()
    except OSError as exc:
        raise WeightsUnavailableError(f"could not load detector weights from {source!r} ({exc}). {HOW_TO_GET_WEIGHTS}") from None
