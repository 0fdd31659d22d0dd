"""The detector side of the pipeline: YOLOS' input constants, its input tensor, and loading it the ordinary way
(hub id or local directory) with clear errors when it cannot be had."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from PIL import Image
from transformers import YolosConfig, YolosForObjectDetection

from ..core.config import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError, WeightsUnavailableError
from ..imageio import to_tensor
from .yolos import patch_yolos

DEFAULT_DETECTOR = "hustvl/yolos-tiny"
YOLOS_SIZE = 512  # px: the paper's square YOLOS-tiny input (§3.5), a 32x32 grid of 16x16 patches
# YOLOS normalises with the ImageNet statistics (YolosImageProcessor's defaults).
YOLOS_MEAN = IMAGENET_MEAN
YOLOS_STD = IMAGENET_STD


def yolos_grid(patch_size: int, image_size: int = YOLOS_SIZE) -> int:
    """Patch grid side of a square YOLOS input: ``image_size // patch_size`` (32 at 512 px with 16 px patches)."""
    if image_size % patch_size:
        raise ConfigError(f"YOLOS input size {image_size} is not a multiple of its patch size {patch_size}")
    return image_size // patch_size


def yolos_pixels(image: Image.Image, size: int = YOLOS_SIZE, mean: tuple[float, ...] = YOLOS_MEAN,
                 std: tuple[float, ...] = YOLOS_STD) -> torch.Tensor:
    """``[3, size, size]`` YOLOS input: the paper's square resize, then normalisation (ImageNet statistics, or a
    loaded ``YolosImageProcessor``'s ``image_mean`` / ``image_std``)."""
    return to_tensor(image, size, mean, std)

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


def yolos_tiny_config(**overrides) -> YolosConfig:
    """The architecture of ``hustvl/yolos-tiny`` (192 wide, 12 layers, 3 heads, 100 detection tokens, 91 labels)."""
    values = dict(
        hidden_size=192,
        num_hidden_layers=12,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=[800, 1333],
        patch_size=16,
        num_detection_tokens=100,
        use_mid_position_embeddings=False,
        num_labels=91,
        layer_norm_eps=1e-12,
        attn_implementation="sdpa",
    )
    values.update(overrides)
    return YolosConfig(**values)


def random_yolos_tiny(seed: int = 0, **overrides) -> YolosForObjectDetection:
    """YOLOS-tiny architecture at random init (latency measurements only; its detections mean nothing). The init
    draws from ``seed`` alone; torch's global generator is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return YolosForObjectDetection(yolos_tiny_config(**overrides)).eval()


RANDOM_INIT_NOTE = "YOLOS-tiny architecture, random init (latency only; no detections shown)"


@dataclass(frozen=True)
class OpenedDetector:
    """A detector as the Predictor holds it: the patched model and its processor, or none where weights are missing.

    ``status`` says which in words (shown by the app).
    """

    model: Optional[YolosForObjectDetection]  # patched (bavit.pruning.yolos.patch_yolos); None without weights
    processor: Optional[object]  # transformers' YolosImageProcessor of those weights
    status: str


def _processor(source: Optional[str]):
    from transformers import YolosImageProcessor

    if source is None:
        return YolosImageProcessor()
    try:
        return YolosImageProcessor.from_pretrained(str(source))
    except Exception:  # no preprocessor_config.json next to the weights: the YOLOS defaults (ImageNet stats)
        return YolosImageProcessor()


def open_detector(source: Union[str, os.PathLike, YolosForObjectDetection, None]) -> OpenedDetector:
    """Load and patch the detector at ``source`` (hub id, local directory, or a loaded model, patched in place).

    Missing weights are not an error here (the app still shows BAViT's grids): the result then has no model and its
    ``status`` says how to get them.

    Raises:
        ConfigError: ``source`` is not a YOLOS model.
    """
    if source is None:
        return OpenedDetector(None, None, "No detector: BAViT grids only.")
    if isinstance(source, torch.nn.Module):
        saved = getattr(source, "name_or_path", "")  # its own preprocessor config when saved with one
        return OpenedDetector(patch_yolos(source), _processor(saved if saved and os.path.isdir(saved) else None),
                              "Detector: a loaded YOLOS model (its weights as given).")
    try:
        model = patch_yolos(load_yolos_model(source))
    except WeightsUnavailableError as exc:
        status = f"Detector weights unavailable, detections are off. {exc}"
        if HOW_TO_GET_WEIGHTS not in str(exc):
            status += " " + HOW_TO_GET_WEIGHTS
        return OpenedDetector(None, None, status)
    except ValueError as exc:
        raise ConfigError(f"detector {source}: {exc}") from None
    return OpenedDetector(model, _processor(source), f"Detector: {source} (pretrained weights).")
