"""Files written so that a crash at any moment leaves either the old file or the new one."""

import errno
import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

import torch

from utils.errors import UserError

__all__ = ["atomic_save", "atomic_write", "atomic_write_text", "is_temporary"]

_TEMPORARY_SUFFIX = ".tmp"


def atomic_write(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file in the folder of ``path``, flush and fsync it, rename it over
    ``path`` and fsync the folder. On any failure the temporary file is removed and ``path`` is untouched; a
    full disk, a quota or a folder that cannot be written is a one-line UserError naming ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=_TEMPORARY_SUFFIX, dir=folder)
    except OSError as exc:
        raise _write_error(exc, path) or exc from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        error = _write_error(exc, path) if isinstance(exc, Exception) else None
        if error is None:
            raise
        raise error from None
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_error(exc: BaseException, path: str) -> UserError | None:
    """The UserError for a write of ``path`` that failed with ``exc`` (or an OSError it was raised from, as
    torch's zip writer does), when the cause is the disk or the folder's permissions; None otherwise."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"; the previous {path} is intact" if os.path.exists(path) else ""
            what = "no space left" if exc.errno == errno.ENOSPC else "disk quota exceeded"
            return UserError(f"{what} writing {path}{kept}")
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return UserError(f"cannot write {path}: {exc.strerror}")
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_save(obj: dict, path: str) -> None:
    """``torch.save(obj, path)``, atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``, atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def is_temporary(name: str, target_suffix: str = "") -> bool:
    """Whether the file name ``name`` is a temporary of :func:`atomic_write` (for a target ending in
    ``target_suffix``), as a killed write leaves it."""
    return name.startswith(".") and name.endswith(_TEMPORARY_SUFFIX) and f"{target_suffix}." in name
