"""Output paths checked before the work: a command that writes a report or a folder after minutes of work tries
the write's first step when it starts (:func:`check_output_file`, :func:`check_output_dir`), so a bad path fails
at once with a one-line :class:`~bavit.errors.ConfigError` instead of after the work.

The probes name their temporaries as :mod:`bavit.files.atomic` does and create nothing that stays.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import ConfigError
from .atomic import TEMP_NAME_EXTRA, recover_dir, replace_refusal

NAME_MAX = 255  # bytes in one file name on the usual file systems (ext4, xfs, btrfs, APFS, NTFS)


def _first_existing(folder: Path, target: Path, what: str) -> Path:
    """``folder`` or its nearest ancestor that exists: where a write's ``mkdir(parents=True)`` starts. Raises the
    error when that is a file (``report.json/sub``) or a link to nothing."""
    while not os.path.lexists(folder):
        folder = folder.parent  # ends: "." and "/" exist
    if not folder.is_dir():
        kind = "a link to nothing" if folder.is_symlink() and not folder.exists() else "a file, not a folder"
        raise ConfigError(f"cannot write {what} {target}: {folder} is {kind}")
    return folder


def _probe(folder: Path, target: Path, what: str, *, prefix: str, make_folder: bool) -> None:
    """Create and delete a temporary file (or folder) in ``folder``, named as the real write names its own: the
    write's first step, tried (permission bits alone cannot say: root, read-only mounts, /proc)."""
    try:
        if make_folder:
            os.rmdir(tempfile.mkdtemp(prefix=prefix, dir=folder))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {target}: cannot create files in {folder} "
                          f"({exc.strerror or exc})") from None


def _check_name(path: str | os.PathLike, what: str) -> Path:
    if not os.fspath(path):
        raise ConfigError(f"{what} is an empty path")
    target = Path(path)
    if len(os.fsencode(target.name)) + TEMP_NAME_EXTRA > NAME_MAX:
        raise ConfigError(f"cannot write {what} {target}: its name is longer than "
                          f"{NAME_MAX - TEMP_NAME_EXTRA} bytes")
    return target


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Fail now, with a one-line :class:`~bavit.errors.ConfigError`, if :func:`~bavit.files.atomic.atomic_path` could
    not write ``path``.

    Call it before the work whose result goes there (a report after minutes of evaluation). Refuses a folder, a
    device or other non-regular file, a parent that is a file, and a folder where no file can be created (tried:
    a temporary file is created and deleted there). Creates nothing that stays; missing parent folders are not
    created (the probe runs in the nearest existing one, where the write would create them).

    Args:
        path: the file the command will write.
        what: how the message names it, e.g. ``"--json"``.
    Returns:
        ``Path(path)``.
    """
    target = _check_name(path, what)
    if target.is_dir():
        raise ConfigError(f"cannot write {what} {target}: it is a folder; name a file")
    if target.exists() and not target.is_file():
        raise ConfigError(f"cannot write {what} {target}: it exists and is not a regular file")
    folder = _first_existing(target.parent, target, what)
    if folder == target.parent:
        _probe(folder, target, what, prefix=f".{target.name}.", make_folder=False)
    else:
        _probe(folder, target, what, prefix=".bavit-probe-", make_folder=True)
    return target


def check_output_dir(path: str | os.PathLike, what: str = "output folder", *, replace: bool = False,
                     manifest: str | None = None, names: tuple[str, ...] = ()) -> Path:
    """Fail now, with a one-line :class:`~bavit.errors.ConfigError`, if the folder ``path`` could not be written.

    Args:
        path: the folder the command will write.
        what: how the message names it, e.g. ``"--out"``.
        replace: ``False``: the folder is created if needed and files are written into it (a training run's
            folder; what is there stays). ``True``: it is replaced whole (:func:`~bavit.files.atomic.atomic_dir`
            with ``owned=names, marker=manifest``, which checks the same again at the swap), so an existing folder
            is accepted only when it is empty or an earlier output: it holds ``manifest`` and nothing but files
            named in ``names`` (:func:`~bavit.files.atomic.replace_refusal`). The current folder (or one holding
            it), a link and files are always refused. An earlier output that a kill left aside between the swap's
            two renames is moved back first (:func:`~bavit.files.atomic.recover_dir`).
        manifest: with ``replace``: the file that marks an earlier output (e.g. ``export.json``).
        names: with ``replace``: every name an output folder holds (``manifest`` included).
    Returns:
        ``Path(path)``.
    """
    target = _check_name(path, what)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"cannot write {what} {target}: it is a file, not a folder")
    if not replace:
        folder = _first_existing(target, target, what)
        if folder == target:
            _probe(folder, target, what, prefix=".bavit-probe-", make_folder=False)
        else:
            _probe(folder, target, what, prefix=".bavit-probe-", make_folder=True)
        return target
    recover_dir(target)  # an earlier output that a kill left aside between atomic_dir's two renames comes back
    resolved, cwd = target.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ConfigError(f"cannot write {what} {target}: it is the current folder or holds it, and would be "
                          "replaced whole; name a new folder")
    if target.is_symlink():
        raise ConfigError(f"refusing to replace {what} {target}: it is a link; name the folder itself")
    if target.is_dir():
        try:
            reason = replace_refusal(target, names, manifest)
        except OSError as exc:
            raise ConfigError(f"cannot write {what} {target}: cannot list it ({exc.strerror or exc})") from None
        if reason is not None:
            raise ConfigError(f"refusing to replace {what} {target}: {reason}, and replacing it would delete "
                              "its contents; name a new or empty folder")
    folder = _first_existing(target.parent, target, what)
    prefix = f".{target.name}-" if folder == target.parent else ".bavit-probe-"
    _probe(folder, target, what, prefix=prefix, make_folder=True)
    return target


__all__ = ["check_output_file", "check_output_dir", "NAME_MAX"]
