"""Atomic writes: a failure mid-write, or a kill before the rename, leaves the old file intact."""

import os

import pytest
import torch

from utils import files
from utils.files import atomic_save, atomic_write_text, is_temporary


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    atomic_save({"epoch": 1, "w": torch.arange(4)}, path)

    def failing_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")   # some bytes reach the temporary file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(files.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    old = _load(path)
    assert old["epoch"] == 1 and torch.equal(old["w"], torch.arange(4))
    assert os.listdir(tmp_path) == ["last.pth"]                 # no temporary file left behind

    atomic_save({"epoch": 3, "w": torch.ones(4)}, path)          # and the next save replaces it
    assert _load(path)["epoch"] == 3


def test_atomic_save_is_a_rename_of_a_complete_file(tmp_path, monkeypatch):
    # a kill between write and rename leaves the old file: the target is only ever touched by os.replace
    path = str(tmp_path / "last.pth")
    atomic_save({"epoch": 1}, path)
    seen = []
    real_replace = os.replace

    def spying_replace(src, dst):
        assert is_temporary(os.path.basename(src), ".pth")
        seen.append(_load(src)["epoch"])                   # the temporary file is complete
        assert _load(dst)["epoch"] == 1                    # the old one still intact
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", spying_replace)
    atomic_save({"epoch": 2}, path)
    assert seen == [2] and _load(path)["epoch"] == 2


def test_atomic_write_text_creates_folders_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "results.json"
    atomic_write_text(str(path), "first")
    atomic_write_text(str(path), "second é")
    assert path.read_text(encoding="utf-8") == "second é" and os.listdir(path.parent) == ["results.json"]
