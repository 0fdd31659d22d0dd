"""Crafted image files for the memory bench (:mod:`.upload_memory`): small files that decode to very large images.

All written to a folder the caller gives (a temporary one), never into the repository. The PNGs are all zeros,
compressed row by row, so a 225 MP image is a ~660 KB file and building one never holds its pixels.
"""
from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ICNS_TYPE = b"ic10"  # the 1024x1024 (512@2x) icon: its data is a PNG


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def zero_png_bytes(width: int, height: int, rows: int | None = None) -> bytes:
    """An all-zero 8-bit RGB PNG of ``width x height``. With ``rows`` < ``height``, its pixel stream stops after
    that many rows (unfinished, then IEND): the header and most of the image are valid and the decoder fails near
    the end."""
    rows = height if rows is None else rows
    compressor, row, parts = zlib.compressobj(9), bytes(1 + 3 * width), []
    for _ in range(rows):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush(zlib.Z_FINISH if rows >= height else zlib.Z_SYNC_FLUSH))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_MAGIC + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def zero_png(path: Path, width: int = 15000, height: int = 15000) -> Path:
    """:func:`zero_png_bytes` written to ``path`` (15000x15000 = 225 MP by default)."""
    path.write_bytes(zero_png_bytes(width, height))
    return path


def truncated_png(path: Path, pixels: int, done: float = 0.9) -> Path:
    """A 4:3 zero PNG of at most ``pixels`` pixels whose pixel stream stops after ``done`` of its rows."""
    height = int(math.sqrt(pixels * 3 / 4))
    width = pixels // height
    path.write_bytes(zero_png_bytes(width, height, rows=int(height * done)))
    return path


def ico_holding(path: Path, png: bytes) -> Path:
    """An ``.ico`` with one icon, ``png``; its directory entry says 256x256 (width and height bytes 0)."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    path.write_bytes(struct.pack("<HHH", 0, 1, 1) + entry + png)
    return path


def icns_holding(path: Path, png: bytes) -> Path:
    """An ``.icns`` with one icon, ``png``, as its 1024x1024 (``ic10``) image."""
    block = ICNS_TYPE + struct.pack(">I", 8 + len(png)) + png
    path.write_bytes(b"icns" + struct.pack(">I", 8 + len(block)) + block)
    return path


def embedded_png(path: Path) -> bytes:
    """The PNG inside an :func:`ico_holding` or :func:`icns_holding` file (for checks)."""
    data = path.read_bytes()
    return data[data.index(PNG_MAGIC):]


def photo_jpeg(path: Path, width: int = 4000, height: int = 3000) -> Path:
    """A smooth, photo-like JPEG of ``width x height`` (12 MP by default; about 1 MB)."""
    small = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(path, quality=90)
    return path
