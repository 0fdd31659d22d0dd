"""Atomic writes: the one place where a file or a folder is written under a temporary name and swapped into place.

* :func:`atomic_path` -- a file. The caller writes a temporary file in the target's folder; on success it is
  flushed to disk and renamed onto the target (``os.replace``, atomic on POSIX and Windows), on any failure
  (``KeyboardInterrupt`` included) it is deleted. Readers see the old file or the new one, never a partial one.
* :func:`atomic_dir` -- a folder (an export, a ``save_pretrained`` checkpoint). A folder cannot be renamed onto a
  non-empty one, so the swap takes two renames: ``NAME -> .NAME.old-XXXXXXXX/NAME`` (a holder folder that
  ``mkdtemp`` creates, so the name is ours alone: a user's ``.NAME.old`` is never touched), then
  ``.NAME-XXXXXXXX -> NAME``; the old copy is deleted last -- whole for a folder the writer alone manages, only the
  files the writer writes for an export (``owned``), whose swap refuses a folder that holds anything else. At every
  moment one complete folder exists, as ``NAME`` or -- when a kill fell between the two renames -- in the holder,
  which :func:`recover_dir` (called by :func:`atomic_dir` itself) moves back.
* :func:`remove_stale_temps` -- what both leave behind when their process is killed mid-write (``kill -9``, power
  loss: no ``finally`` runs); a command calls it when it starts, for the paths it writes.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import ConfigError

FILE_MODE = 0o644  # mkstemp creates 0600; checkpoints and exports are meant to be shared
DIR_MODE = 0o755  # mkdtemp creates 0700
# what atomic_path / atomic_dir add to a name at most: ".NAME.XXXXXXXX.tmp", ".NAME-XXXXXXXX", ".NAME.old-XXXXXXXX"
TEMP_NAME_EXTRA = 14


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


def _holders(path: Path) -> list[Path]:
    """The ``.NAME.old-XXXXXXXX`` folders :func:`atomic_dir` made next to ``path`` (``XXXXXXXX``: mkdtemp's 8 random
    characters) to hold the old copy, as ``.NAME.old-XXXXXXXX/NAME``, while it swaps; oldest first."""
    holders = []
    for holder in path.parent.glob(f".{glob.escape(path.name)}.old-{'?' * 8}"):
        with contextlib.suppress(OSError):  # one that went meanwhile is not one
            if holder.is_dir() and not holder.is_symlink():
                holders.append((holder.stat().st_mtime_ns, holder))
    return [holder for _, holder in sorted(holders)]


def recover_dir(path: str | os.PathLike) -> Path:
    """``path``, after moving the old copy back to ``NAME`` when an interrupt fell between :func:`atomic_dir`'s two
    renames (``NAME`` missing, the complete old copy in ``.NAME.old-XXXXXXXX/NAME``). Moves nothing else (a
    ``.NAME.old`` of the user's is not one of these). Safe to call at any time; returns ``Path(path)``."""
    path = Path(path)
    if os.path.lexists(path):
        return path
    for holder in reversed(_holders(path)):  # the newest: an earlier one would be a swap killed while discarding
        old = holder / path.name
        if old.is_dir() and not old.is_symlink():
            os.rename(old, path)
            with contextlib.suppress(OSError):
                holder.rmdir()
            break
    return path


def replace_refusal(folder: str | os.PathLike, owned: Iterable[str], marker: str | None = None) -> str | None:
    """Why the existing folder ``folder`` may not be replaced by a writer that writes the files ``owned`` (and
    marks its folders with the file ``marker``), or None when it may: it is empty, or holds ``marker`` and nothing
    but regular files named in ``owned``. A reason reads "it holds notes.txt, which an output folder does not".

    Raises:
        OSError: ``folder`` cannot be listed.
    """
    owned = set(owned)
    entries = sorted(os.listdir(folder))
    if not entries:
        return None
    if marker is not None and marker not in entries:
        return f"it has no {marker}, so it is not an earlier output"
    strangers = [name for name in entries
                 if name not in owned or not stat.S_ISREG(os.lstat(os.path.join(folder, name)).st_mode)]
    if strangers:
        more = ", ..." if len(strangers) > 3 else ""
        return f"it holds {', '.join(strangers[:3])}{more}, which an output folder does not"
    return None


def _discard(holder: Path, name: str, owned: frozenset[str] | None, marker: str | None) -> None:
    """Delete the old copy ``holder/name`` that :func:`atomic_dir` moved aside, then ``holder``: the whole copy when
    ``owned`` is None (a folder the writer alone manages), else only its regular files named in ``owned``
    (``marker`` last, so that a copy cut short here still reads as an earlier output); anything else stays."""
    old = holder / name
    if owned is None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    elif old.is_dir() and not old.is_symlink():
        entries = sorted(old.iterdir(), key=lambda entry: entry.name == marker)
        for entry in entries:
            if entry.name in owned and entry.is_file() and not entry.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
    for folder in (old, holder):  # not empty: something not ours is kept there
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, mode: int = DIR_MODE, *, owned: Iterable[str] | None = None,
               marker: str | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; fill it, and on a clean exit it replaces ``path``.

    Args:
        path: the target folder; its parent is created if needed.
        mode: permission bits of the finished folder.
        owned: None: the existing folder is wholly the writer's (a run's ``checkpoint/``), deleted whole once
            replaced. Names: the files the writer puts there (an export's); the existing folder is replaced only
            if :func:`replace_refusal` allows it at the moment of the swap -- it is empty, or holds ``marker`` and
            nothing else -- and only those files of it are deleted: a file a user added to it meanwhile makes the
            swap refuse (:class:`~bavit.errors.ConfigError`), with ``path`` left as it was.
        marker: with ``owned``: the file that marks the writer's folders (an export's ``export.json``).
    Yields:
        ``.NAME-XXXXXXXX`` in the same parent folder.
    On any exception (also ``KeyboardInterrupt``) the temporary folder is deleted and ``path`` is left as it was.
    See the module docstring for the two-rename swap and :func:`recover_dir`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    owned = None if owned is None else frozenset(owned)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    holder = None
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file() and not file.is_symlink():
                _fsync_file(file)
        os.chmod(tmp, mode)
        recover_dir(path)  # an old copy that an interrupted swap left aside comes back first
        if os.path.lexists(path):
            _check_replaceable(path, path, owned, marker)
            holder = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))  # a name of our own
            os.rename(path, holder / path.name)
            if owned is not None:  # again: a file added between the check and the rename went along
                _check_replaceable(holder / path.name, path, owned, marker)
        os.rename(tmp, path)
    except BaseException:
        if holder is not None and not os.path.lexists(path):  # the old copy goes back where it was
            with contextlib.suppress(OSError):
                os.rename(holder / path.name, path)
                holder.rmdir()
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path.parent)
    if holder is not None:
        _discard(holder, path.name, owned, marker)
    for stale in _holders(path):  # old copies of earlier swaps that were killed before they deleted them
        _discard(stale, path.name, owned, marker)


def _check_replaceable(folder: Path, shown: Path, owned: frozenset[str] | None, marker: str | None) -> None:
    """Raise :class:`~bavit.errors.ConfigError` (naming ``shown``, the target) unless :func:`atomic_dir` may replace
    the existing ``folder``: a real folder, and with ``owned``, one that :func:`replace_refusal` allows."""
    if folder.is_symlink() or not folder.is_dir():
        raise ConfigError(f"refusing to replace {shown}: it is {'a link' if folder.is_symlink() else 'a file'}, "
                          "not a folder")
    if owned is None:
        return
    reason = replace_refusal(folder, owned, marker)
    if reason is not None:
        raise ConfigError(f"refusing to replace {shown}: {reason} (it changed while the new one was being written); "
                          "it is left as it was and the new one is discarded")


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


__all__ = ["atomic_path", "atomic_dir", "recover_dir", "replace_refusal", "remove_stale_temps", "write_text",
           "TEMP_NAME_EXTRA"]
