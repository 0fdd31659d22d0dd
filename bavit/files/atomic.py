"""Atomic writes: the one place where a file or a folder is written under a temporary name and swapped into place.

* :func:`atomic_path` -- a file. The caller writes a temporary file in the target's folder; on success it is
  flushed to disk and renamed onto the target (``os.replace``, atomic on POSIX and Windows), on any failure
  (``KeyboardInterrupt`` included) it is deleted. Readers see the old file or the new one, never a partial one.
* :func:`atomic_dir` -- a folder (e.g. a ``save_pretrained`` checkpoint). A folder cannot be renamed onto a
  non-empty one, so the swap takes two renames: ``NAME -> .NAME.old``, then ``temp -> NAME``; ``.NAME.old`` is
  deleted last. At every moment one complete folder exists, as ``NAME`` or -- when an interrupt fell between the
  two renames -- as ``.NAME.old``, which :func:`recover_dir` (called by :func:`atomic_dir` itself) moves back.
* :func:`remove_stale_temps` -- what both leave behind when their process is killed mid-write (``kill -9``, power
  loss: no ``finally`` runs); a command calls it when it starts, for the paths it writes.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

FILE_MODE = 0o644  # mkstemp creates 0600; checkpoints and exports are meant to be shared
DIR_MODE = 0o755  # mkdtemp creates 0700
TEMP_NAME_EXTRA = 14  # what atomic_path / atomic_dir add to a name: ".NAME.XXXXXXXX.tmp", ".NAME-XXXXXXXX"


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s contents to disk so the rename cannot land before the data does."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (the rename) to disk; best effort (not possible on every OS / file system)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; write it, and on a clean exit it replaces ``path``.

    Example::

        with atomic_path(out / "last.safetensors") as tmp:
            save_file(tensors, str(tmp))

    Args:
        path: the target file; its folder is created if needed.
        mode: permission bits of the finished file.
    Yields:
        ``.NAME.XXXXXXXX.tmp`` in the same folder (same file system, so the final rename is atomic); it exists
        (empty) when the block starts, and the block may overwrite it.
    On any exception (also ``KeyboardInterrupt``) the temporary file is removed, ``path`` is left as it was and
    the exception propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def _old(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


def recover_dir(path: str | os.PathLike) -> Path:
    """``path``, after moving ``.NAME.old`` back to ``NAME`` when an interrupt fell between :func:`atomic_dir`'s
    two renames (``NAME`` missing, ``.NAME.old`` complete). Safe to call at any time; returns ``Path(path)``."""
    path = Path(path)
    old = _old(path)
    if not path.exists() and old.is_dir():
        os.replace(old, path)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, mode: int = DIR_MODE) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; fill it, and on a clean exit it replaces ``path``.

    Args:
        path: the target folder; its parent is created if needed.
        mode: permission bits of the finished folder.
    Yields:
        ``.NAME-XXXXXXXX`` in the same parent folder.
    On any exception (also ``KeyboardInterrupt``) the temporary folder is deleted and ``path`` is left as it was.
    See the module docstring for the two-rename swap and :func:`recover_dir`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = _old(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file() and not file.is_symlink():
                _fsync_file(file)
        os.chmod(tmp, mode)
        recover_dir(path)  # never delete .NAME.old while it is the only complete copy
        if old.exists():
            shutil.rmtree(old)  # a leftover of an earlier swap that was interrupted while deleting it
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (reports: ``--json``, ``--markdown``). Returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def remove_stale_temps(*paths: str | os.PathLike) -> list[Path]:
    """Delete the temporaries a killed writer left next to each of ``paths``: :func:`atomic_path`'s
    ``.NAME.XXXXXXXX.tmp`` files and :func:`atomic_dir`'s ``.NAME-XXXXXXXX`` folders (``XXXXXXXX``: mkstemp's 8
    random characters), nothing else. Call it only where no other process is writing ``paths``, e.g. when a run
    starts. Returns what was removed."""
    removed = []
    for path in map(Path, paths):
        name = glob.escape(path.name)
        for stale in [*path.parent.glob(f".{name}.{'?' * 8}.tmp"), *path.parent.glob(f".{name}-{'?' * 8}")]:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


__all__ = ["atomic_path", "atomic_dir", "recover_dir", "remove_stale_temps", "write_text", "TEMP_NAME_EXTRA"]
