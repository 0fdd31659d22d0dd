"""What the app accepts from a request: which files it reads, how large they may be, and reading them
(:func:`read_image`, the one preprocessing of the page and the API).

A request names an image by a file payload (``{"path": ...}``), and a client can write any path there. So every
path the app reads on behalf of a request must resolve -- symbolic links followed -- to a regular file inside one
of its image folders (Gradio's upload folder, ``assets/examples``, the ``--data`` image folders); anything else gets
one :class:`RefusedImage` error whose text says nothing about the path (a missing file, a folder, a non-image and
an image outside the folders read the same), so the API cannot be used to read or probe the server's files.

The limits (docs/deployment.md, "Limits and safe deployment"), sized for a CPU Space (2 vCPU, 16 GB):

* :data:`MAX_UPLOAD` -- Gradio's ``max_file_size``: larger uploads are refused while they arrive.
* :data:`MAX_IMAGE_PIXELS` -- an image that would decode to more pixels is refused from its header, before
  decoding, in every format (a 656 KB PNG can hold 225 MP of zeros). JPEGs decode at up to 1/8 scale (only as
  large as the analysis needs), so a JPEG may store up to 64 times as many.
* :data:`DECODE_SLOTS` -- at most this many images are decoded at once, whatever the queue's concurrency, so the
  decode memory of the whole app stays below ``DECODE_SLOTS`` times that of one largest image.
* :data:`CACHE_LIFETIME` -- Gradio's ``delete_cache``: uploads and result files are deleted after this (seconds).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DataError
from ..imageio import load_image, load_painted

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"  # the gallery: an image folder
ANALYSIS_SIDE = 1024  # px: images are read at most this large (BAViT sees 384, YOLOS 512)
MAX_UPLOAD = "25mb"
MAX_IMAGE_PIXELS = 50_000_000  # 50 MP: an 8000x6000 (48 MP) camera photo passes
DECODE_SLOTS = 2
MAX_PAINT_LAYERS = 4  # layers of one painted GT (the page's editor sends one)
CACHE_LIFETIME = 3600  # s

_DECODING = threading.BoundedSemaphore(DECODE_SLOTS)


class RefusedImage(DataError):
    """A payload that names no readable file inside the app's image folders."""

    def __init__(self) -> None:
        super().__init__("this image cannot be read: give a file uploaded to this app or one of its examples")


def payload_path(payload: Any) -> tuple[str, str]:
    """``(path, file name to show)`` of a file payload: a dict (from ``preprocess=False``), a Gradio ``FileData``
    or a path. The name is the upload's original name when the payload has one.

    Raises:
        RefusedImage: a payload without a path.
    """
    if isinstance(payload, dict):
        path, name = payload.get("path"), payload.get("orig_name")
    elif hasattr(payload, "path"):
        path, name = payload.path, getattr(payload, "orig_name", None)
    else:
        path, name = payload, None
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise RefusedImage()
    return str(path), str(name) if isinstance(name, str) and name else Path(path).name


def confine(path: str | os.PathLike, roots: Iterable[str | os.PathLike]) -> Path:
    """``path`` resolved (symbolic links followed), if it is a regular file inside one of ``roots``.

    Raises:
        RefusedImage: anything else, with the same text whatever the reason.
    """
    try:
        resolved = Path(path).resolve(strict=True)
        if resolved.is_file() and any(resolved.is_relative_to(Path(root).resolve()) for root in roots):
            return resolved
    except (OSError, RuntimeError, ValueError):  # missing, a link loop, a NUL byte in the name
        pass
    raise RefusedImage()


def _release_freed_memory() -> None:
    """Hand memory freed by a large decode back to the system (glibc keeps freed heap pages otherwise, so one
    large image would raise the server's resident memory for good). A no-op where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def decode_slot() -> Iterator[None]:
    """Hold one of the :data:`DECODE_SLOTS` process-wide decode slots (waits for a free one) while decoding; after
    the block, freed memory goes back to the system, also when the block refused the image."""
    try:
        with _DECODING:
            yield
    finally:
        _release_freed_memory()


def read_image(payload: Any, roots: Iterable[str | os.PathLike], exif: bool = True) -> tuple[Image.Image, str]:
    """The payload's image, fitted into :data:`ANALYSIS_SIDE`, and the file name to show.

    The file must lie in one of ``roots`` (:func:`confine`), have at most :data:`MAX_IMAGE_PIXELS` pixels (checked
    before decoding) and is decoded in one of the :data:`DECODE_SLOTS`. ``image.info["source_size"]`` is its size as
    stored; ``exif=False`` keeps the stored pixel layout (COCO annotations refer to it).

    Raises:
        DataError: refused, not an image, corrupt or too large; the message names the upload's file name, never a
            server path.
    """
    path, name = payload_path(payload)
    resolved = confine(path, roots)
    try:
        with decode_slot():
            return load_image(resolved, max_side=ANALYSIS_SIDE, exif=exif, max_pixels=MAX_IMAGE_PIXELS), name
    except DataError as exc:
        message = str(exc).replace(str(resolved), repr(name))
    # raised here, not in the except block, so the refusal holds no decoding frame (see bavit.imageio.load_image)
    raise DataError(message if repr(name) in message else f"{name!r}: {message}")


def read_painted(editor_value: Any, roots: Iterable[str | os.PathLike]) -> list:
    """The painted masks (``[H, W]`` bool each) of a raw ``gr.ImageEditor`` value (``preprocess=False``: file
    payloads, never arrays Gradio decoded without a limit): each layer confined like an upload
    (:func:`confine`), at most :data:`MAX_IMAGE_PIXELS` from its header, decoded one at a time in a decode slot;
    at most :data:`MAX_PAINT_LAYERS` layers.

    Raises:
        DataError: not an editor value, too many layers, or a layer refused as :func:`read_image` refuses images.
    """
    if editor_value is None:
        return []
    layers = editor_value.get("layers") if isinstance(editor_value, dict) else None
    if not isinstance(layers, list):
        raise DataError("the painted GT is not an image editor's value")
    if len(layers) > MAX_PAINT_LAYERS:
        raise DataError(f"the painted GT has {len(layers)} layers; at most {MAX_PAINT_LAYERS} are read")
    masks = []
    for layer in layers:
        if layer is None:
            continue
        resolved = confine(payload_path(layer)[0], roots)
        with decode_slot():
            masks.append(load_painted(resolved, MAX_IMAGE_PIXELS))
    return masks


def allowed_paths(data: str | Path | None) -> list[str]:
    """Folders ``launch(allowed_paths=...)`` must serve: the COCO image folders the examples come from (read in
    place, never copied into the repo)."""
    if not data:
        return []
    root = Path(data).expanduser()
    return [str(p) for p in sorted(root.iterdir()) if p.is_dir() and p.name != "annotations"] if root.is_dir() else []


__all__ = ["ANALYSIS_SIDE", "CACHE_LIFETIME", "DECODE_SLOTS", "EXAMPLES_DIR", "MAX_IMAGE_PIXELS", "MAX_UPLOAD",
           "MAX_PAINT_LAYERS", "RefusedImage", "allowed_paths", "confine", "decode_slot", "payload_path",
           "read_image", "read_painted"]
