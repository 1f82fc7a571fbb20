"""What ``train.py`` and ``test.py`` check before torch is imported: the output folder.

The output folder is protected:

- while a run is live, it holds a lock (``flock`` on ``OUTPUT_DIR/.run.lock``, released by the kernel however
  the process ends): a second ``train.py`` or ``test.py`` in the same folder is refused;
- ``train.py`` never overwrites what an earlier run left there: a folder holding a run's files is refused
  unless ``SOLVER.RESUME True`` continues it (and a resume needs ``last.pth`` when the run saved checkpoints);
- an output folder that is a file, or cannot be written, is refused in one line.
"""

import fcntl
import glob
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from yacs.config import CfgNode

from utils.errors import UserError

__all__ = ["LOCK_NAME", "evaluation", "training"]

LOCK_NAME = ".run.lock"
#: What a training run writes into OUTPUT_DIR, by what it is (checkpoints first: they decide the refusal).
_CHECKPOINTS = ("last.pth", "model_final.pth", "model_epoch*.pth")
_RECORDS = ("test_results.json", "config.yaml", "train.log", "tensorboard")


def _is_main_process() -> bool:
    """Rank 0 of a torchrun job (or a plain run): the one process that writes the output folder."""
    return os.environ.get("RANK", "0") == "0"


def _make_output_folder(path: str) -> None:
    """OUTPUT_DIR ``path`` is, or is created as, a folder; one-line UserErrors otherwise."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"OUTPUT_DIR {path} is a file, not a folder; choose a folder")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"OUTPUT_DIR {path} cannot be created: {parent} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"OUTPUT_DIR {path} cannot be created: {exc.strerror}") from None


class _Lock:
    """An exclusive ``flock`` on ``<folder>/.run.lock`` for the life of a run; the file names its holder."""

    def __init__(self, folder: str, command: str):
        self.path = os.path.join(folder, LOCK_NAME)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UserError(f"OUTPUT_DIR {folder} is not writable ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise UserError(f"OUTPUT_DIR {folder} is in use by a live run ({holder}); wait for it to end, "
                                f"or choose another OUTPUT_DIR") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder released (and removed) the file between our open and flock: retry
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{command}, pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())

    def release(self) -> None:
        try:
            os.remove(self.path)  # before the unlock: a waiting run then creates a fresh file
        finally:
            os.close(self.fd)


@contextmanager
def _locked(folder: str, command: str) -> Iterator[None]:
    lock = _Lock(folder, command) if _is_main_process() else None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _present(folder: str, patterns) -> list[str]:
    return sorted(os.path.basename(p) for pattern in patterns for p in glob.glob(os.path.join(folder, pattern)))


def _check_earlier_run(folder: str, resume: bool) -> None:
    """Refuse a folder holding an earlier run's files unless ``resume`` continues it from its last.pth."""
    checkpoints = _present(folder, _CHECKPOINTS)
    records = _present(folder, _RECORDS)
    if resume and ("last.pth" in checkpoints or not (checkpoints or "test_results.json" in records)):
        return  # continue from last.pth, or start afresh a run that saved nothing
    if not checkpoints and not records:
        return
    found = ", ".join((checkpoints + records)[:4])
    if resume:
        raise UserError(f"SOLVER.RESUME is True but OUTPUT_DIR {folder} has no last.pth to resume from, and "
                        f"starting afresh would overwrite its {found}; choose another OUTPUT_DIR")
    if "model_final.pth" in checkpoints:
        what = "a finished run"
    elif "last.pth" in checkpoints:
        what = "a run that can be resumed"
    else:
        what = "the files of an earlier run"
    hint = "continue it with SOLVER.RESUME True, or " if "model_final.pth" not in checkpoints else ""
    raise UserError(f"OUTPUT_DIR {folder} already holds {what} ({found}); {hint}choose another OUTPUT_DIR "
                    f"(nothing in it was changed)")


@contextmanager
def training(cfg: CfgNode) -> Iterator[None]:
    """``train.py``'s checks before torch is imported; the output folder stays locked inside the block."""
    folder = cfg.OUTPUT_DIR
    _make_output_folder(folder)
    with _locked(folder, "train.py"):
        _check_earlier_run(folder, cfg.SOLVER.RESUME)
        yield


@contextmanager
def evaluation(cfg: CfgNode) -> Iterator[None]:
    """``test.py``'s checks before torch is imported; the output folder stays locked inside the block."""
    _make_output_folder(cfg.OUTPUT_DIR)
    with _locked(cfg.OUTPUT_DIR, "test.py"):
        yield
