"""Image decoding and the square resize every model here applies.

User images may be any mode (L, LA, P, RGBA, I;16, I, F, CMYK), any size and EXIF-rotated; all become 8-bit RGB.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

ImageInput = Union[str, os.PathLike, bytes, np.ndarray, Image.Image]

# Larger images are downscaled (keeping aspect) before anything else: no model here looks at more than 512 px.
MAX_SIDE = 2048
# PIL warns above ~89 MP and refuses above ~179 MP by default (load_image treats the warning as an error); entry
# points (the CLI, app.py) raise PIL's process-wide bound to this with allow_large_images(), keeping a bound against
# decompression bombs.
MAX_PIXELS = 250_000_000


def allow_large_images(max_pixels: int = MAX_PIXELS) -> None:
    """Let PIL decode photos up to ``max_pixels`` (a process-wide setting: call it from entry points only)."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(source: ImageInput, max_side: int | None = MAX_SIDE, exif: bool = True) -> Image.Image:
    """Decode any supported image into 8-bit RGB.

    Args:
        source: path, encoded bytes, ``[H, W]`` / ``[H, W, C]`` uint8/uint16/float array, or a PIL image.
        max_side: downscale (aspect kept) so the longer side is at most this; ``None`` keeps the size.
        exif: apply the EXIF orientation tag (user photos); datasets pass ``False`` because their
            annotations refer to the stored pixel layout.
    Raises:
        DataError: missing, empty, corrupt or non-image input.
    """
    name = "image"
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, np.ndarray):
            array = source
            if array.ndim == 3 and array.shape[2] == 1:
                array = array[..., 0]
            if array.dtype != np.uint8:
                array = array.astype(np.float64)
                high = 65535.0 if array.max() > 255 else (1.0 if array.max() <= 1.0 else 255.0)
                array = np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
            if array.ndim not in (2, 3) or array.size == 0:
                raise DataError(f"array of shape {source.shape} is not an image")
            image = Image.fromarray(array)
        else:
            if isinstance(source, (bytes, bytearray)):
                data = bytes(source)
            else:
                path = Path(source)
                name = str(path)
                if not path.is_file():
                    raise DataError(f"image not found: {path}")
                data = path.read_bytes()
            if not data:
                raise DataError(f"{name} is empty (0 bytes)")
            image = Image.open(io.BytesIO(data))
            if max_side is not None and image.format == "JPEG":
                image.draft("RGB", (max_side, max_side))  # decode big JPEGs at reduced scale: fast, little memory
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
        if exif:
            image = ImageOps.exif_transpose(image)
        if image.width < 1 or image.height < 1:
            raise DataError(f"{name} has no pixels")
        if max_side is not None and max(image.size) > max_side:
            image = image.copy()
            image.thumbnail((max_side, max_side), Image.BILINEAR)
        return _to_rgb(image)
    except DataError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{name} is not a readable image ({exc.__class__.__name__}: {exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{name} is corrupt or truncated ({exc})") from None


def square_resize(image: Image.Image, size: int) -> Image.Image:
    """The square resize (aspect not kept) that BAViT (384) and the pruned YOLOS (512) apply."""
    return image.resize((size, size), Image.BILINEAR)


def to_tensor(image: Image.Image, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """RGB PIL image -> ``[3, size, size]`` float tensor, square-resized and normalised."""
    array = np.asarray(square_resize(image, size), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(array).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (pixels - mean_t) / std_t
