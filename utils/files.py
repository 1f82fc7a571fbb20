"""Files written so that a crash at any moment leaves either the old file or the new one."""

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

import torch

__all__ = ["atomic_save", "atomic_write", "atomic_write_text", "is_temporary"]

_TEMPORARY_SUFFIX = ".tmp"


def atomic_write(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file in the folder of ``path``, flush and fsync it, rename it over
    ``path`` and fsync the folder. On any failure the temporary file is removed and ``path`` is untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=_TEMPORARY_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
