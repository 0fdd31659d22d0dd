"""Image decoding and the square resize every model here applies.

User images may be any mode (L, LA, P, RGBA, I;16, I, F, CMYK), any size and EXIF-rotated; all become 8-bit RGB.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, DataError

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


# The formats decoded here: those whose header gives the size without decoding pixels. Pillow decodes some others
# while opening them (ICO and ICNS decode their largest embedded image in ``Image.open``), before any size check.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")  # JPEG includes MPO (multi-picture JPEG)

WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # 16/32-bit single-channel modes
_ROWS = 512  # rows converted at a time from a wide mode: bounds the float64 scratch memory


def _to_8bit(image: Image.Image) -> Image.Image:
    """A :data:`WIDE_MODES` image as 8-bit ``L``: ``round(value / high * 255)``, ``high`` 65535 for 16-bit data
    (and 32-bit data above 255), else 255. Converted in blocks of rows, so the scratch memory stays small."""
    array = np.asarray(image)
    high = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
    out = np.empty(array.shape, dtype=np.uint8)
    for row in range(0, array.shape[0], _ROWS):
        block = array[row:row + _ROWS].astype(np.float64)
        out[row:row + _ROWS] = np.clip(block / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in WIDE_MODES:
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def megapixels(pixels: int, limit: int) -> tuple[str, str]:
    """``pixels`` and ``limit`` in MP, with as few decimals as tell them apart (``("225", "50")``,
    ``("50.01", "50.00")``)."""
    for decimals in range(7):
        texts = f"{pixels / 1e6:.{decimals}f}", f"{limit / 1e6:.{decimals}f}"
        if texts[0] != texts[1]:
            return texts
    return f"{pixels / 1e6}", f"{limit / 1e6}"


def _decode(handle, name: str, max_side: int | None, max_pixels: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """Open ``handle`` (a binary file object) as one of :data:`FORMATS`, refuse it when more than ``max_pixels``
    (or PIL's process-wide ``Image.MAX_IMAGE_PIXELS``) would be decoded (known from the header alone), then decode
    it. Returns the decoded image and its stored ``(width, height)``.

    The bounds are plain comparisons, not warning filters: ``warnings.catch_warnings`` is process-wide and not
    thread-safe, so concurrent decodes could leave an "error" filter installed and change later answers."""
    image = Image.open(handle, formats=FORMATS)
    size = image.size
    if max_side is not None and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (max_side, max_side))  # decode big JPEGs at reduced scale (1/2..1/8): fast, little memory
    decoded = image.size[0] * image.size[1]  # what decoding allocates: the stored size, or a JPEG's reduced one
    if max_pixels is not None and decoded > max_pixels:
        stored, limit = megapixels(size[0] * size[1], max_pixels)
        raise DataError(f"{name} is {size[0]}x{size[1]} px ({stored} MP); the limit here is {limit} MP decoded: "
                        "downscale it first")
    if Image.MAX_IMAGE_PIXELS and decoded > Image.MAX_IMAGE_PIXELS:
        raise DataError(f"{name} has too many pixels to decode safely")
    image.load()
    return image, size


def load_image(source: ImageInput, max_side: int | None = MAX_SIDE, exif: bool = True,
               max_pixels: int | None = None) -> Image.Image:
    """Decode any supported image into 8-bit RGB.

    Args:
        source: path, encoded bytes, ``[H, W]`` / ``[H, W, C]`` uint8/uint16/float array, or a PIL image.
        max_side: downscale (aspect kept) so the longer side is at most this; ``None`` keeps the size.
        exif: apply the EXIF orientation tag (user photos); datasets pass ``False`` because their
            annotations refer to the stored pixel layout.
        max_pixels: refuse encoded input (a path or bytes) with more pixels than this, from its header, before
            decoding anything (the app's bound, :data:`bavit.app.uploads.MAX_IMAGE_PIXELS`); ``None``: only PIL's
            process-wide decompression-bomb bound.
    Returns:
        The RGB image; ``image.info["source_size"]`` is the ``(width, height)`` before any downscaling (after the
        EXIF rotation).
    Raises:
        DataError: missing, empty, corrupt, too large or non-image input. The message names the file (or
        "image") and never carries the text of a Python object.
    """
    name = "image"
    # A refusal is raised after the ``except`` block, never inside it: an exception raised there keeps the caught
    # one as its ``__context__`` (``from None`` only hides it), and that one's traceback keeps the decoding frames
    # and their pixels alive for as long as the refusal lives (in a server, until the thread's next job).
    try:
        stored = None  # (width, height) in the file's header, for encoded input
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
        elif isinstance(source, (bytes, bytearray)):
            if not source:
                raise DataError("image is empty (0 bytes)")
            image, stored = _decode(io.BytesIO(source), name, max_side, max_pixels)
        else:
            path = Path(source)
            name = str(path)
            if not path.is_file():
                raise DataError(f"image not found: {path}")
            if path.stat().st_size == 0:
                raise DataError(f"{name} is empty (0 bytes)")
            with open(path, "rb") as handle:  # decoded from the file: no second whole copy in memory
                image, stored = _decode(handle, name, max_side, max_pixels)
        decoded = image.size
        if exif:
            image = ImageOps.exif_transpose(image)
        source_size = image.size if stored is None else stored
        if image.size != decoded:  # an EXIF rotation by 90 degrees
            source_size = source_size[::-1]
        if image.width < 1 or image.height < 1:
            raise DataError(f"{name} has no pixels")
        if image.mode in WIDE_MODES:
            image = _to_8bit(image)  # PIL cannot resize every wide mode
        if max_side is not None and max(image.size) > max_side:
            if image is source:
                image = image.copy()  # thumbnail works in place: never change the caller's image
            image.thumbnail((max_side, max_side), Image.BILINEAR)
        rgb = _to_rgb(image)
        rgb.info["source_size"] = source_size
        return rgb
    except DataError as exc:
        exc.__traceback__ = None  # raised from the decoding frames: they would keep their pixels alive
        refusal = exc
    except UnidentifiedImageError:
        refusal = DataError(f"{name} is not a readable image (not one of {', '.join(FORMATS)}, or damaged)")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        refusal = DataError(f"{name} has too many pixels to decode safely")
    except PermissionError:
        refusal = DataError(f"{name} cannot be read (permission denied)")
    except (OSError, SyntaxError, ValueError) as exc:
        reason = exc.__class__.__name__ if " at 0x" in str(exc) else str(exc)
        refusal = DataError(f"{name} is corrupt or truncated ({reason})")
    raise refusal


def load_painted(path: str | os.PathLike, max_pixels: int) -> np.ndarray:
    """``[H, W]`` bool: the pixels painted in an image editor's layer file, where its alpha is above 0 (where any
    channel is above 0 in a layer without alpha). Refused like :func:`load_image` (``max_pixels`` from the header,
    before decoding; :class:`DataError` naming no path)."""
    try:
        with open(path, "rb") as handle:
            layer, _ = _decode(handle, "painted layer", None, max_pixels)
        bands = layer.getbands()
        if "A" in bands:
            return np.asarray(layer.getchannel("A")) > 0
        return np.asarray(layer.convert("L")) > 0
    except DataError as exc:
        message = str(exc)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        message = "painted layer has too many pixels to decode safely"
    except (OSError, SyntaxError, ValueError):
        message = "painted layer is not a readable image"
    raise DataError(message)  # outside the except blocks: no decoding frame kept (see load_image)


def square_resize(image: Image.Image, size: int) -> Image.Image:
    """The square resize (aspect not kept) that BAViT (its config's ``img_size``) and the pruned YOLOS (512) apply:
    PIL's bilinear filter, which widens with the scale when shrinking (antialiased). Resizing to the size an image
    already has returns an unchanged copy."""
    return image.resize((size, size), Image.BILINEAR)


def rgb_from_tensor(pixels: torch.Tensor) -> Image.Image:
    """``uint8 [3, H, W]`` RGB tensor -> PIL RGB image (the same pixels).

    Raises:
        ConfigError: another dtype or shape.
    """
    if pixels.dtype != torch.uint8 or pixels.dim() != 3 or pixels.shape[0] != 3:
        raise ConfigError(f"an RGB image tensor is uint8 [3, H, W], got {pixels.dtype} {list(pixels.shape)}")
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())


def to_tensor(image: Image.Image | torch.Tensor, size: int, mean: tuple[float, ...],
              std: tuple[float, ...]) -> torch.Tensor:
    """An 8-bit RGB image at any size -> ``float32 [3, size, size]``: :func:`square_resize`, then
    ``(x / 255 - mean) / std`` per channel.

    The one preprocessing of the models' inputs: BAViT's (:func:`bavit.core.model.bavit_pixels`: the Predictor, and
    training's views after their augmentation) and YOLOS's (:func:`bavit.pruning.detector.yolos_pixels`).

    Args:
        image: a PIL RGB image, or a ``uint8 [3, H, W]`` tensor (training's cached and augmented views), which goes
            through the same PIL resize.
    """
    if isinstance(image, torch.Tensor):
        image = rgb_from_tensor(image)
    array = np.asarray(square_resize(image, size), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(array).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (pixels - mean_t) / std_t
