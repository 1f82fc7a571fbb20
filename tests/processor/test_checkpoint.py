"""Checkpoints: atomic writes survive a failure mid-write; RNG states round-trip through weights_only."""

import os
import random

import numpy as np
import pytest
import torch

from processor import checkpoint
from processor.checkpoint import atomic_save, read_checkpoint, rng_state, set_rng_state
from utils.errors import UserError


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    atomic_save({"epoch": 1, "w": torch.arange(4)}, path)

    def failing_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")   # some bytes reach the temporary file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    old = read_checkpoint(path)
    assert old["epoch"] == 1 and torch.equal(old["w"], torch.arange(4))
    assert os.listdir(tmp_path) == ["last.pth"]                 # no temporary file left behind

    atomic_save({"epoch": 3, "w": torch.ones(4)}, path)          # and the next save replaces it
    assert read_checkpoint(path)["epoch"] == 3


def test_atomic_save_is_a_rename_of_a_complete_file(tmp_path, monkeypatch):
    # a kill between write and rename leaves the old file: the target is only ever touched by os.replace
    path = str(tmp_path / "last.pth")
    atomic_save({"epoch": 1}, path)
    seen = []
    real_replace = os.replace

    def spying_replace(src, dst):
        seen.append(torch.load(src, weights_only=True)["epoch"])   # the temporary file is complete
        assert read_checkpoint(dst)["epoch"] == 1                   # the old one still intact
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", spying_replace)
    atomic_save({"epoch": 2}, path)
    assert seen == [2] and read_checkpoint(path)["epoch"] == 2


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    atomic_save({"rng": rng_state()}, str(tmp_path / "rng.pth"))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(read_checkpoint(str(tmp_path / "rng.pth"))["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


class NotAWeight:
    pass


def test_unreadable_checkpoints_are_named_without_unsafe_advice(tmp_path):
    pickled = str(tmp_path / "object.pth")
    torch.save({"model": NotAWeight()}, pickled)            # arbitrary objects: refused by weights_only
    with pytest.raises(UserError) as info:
        read_checkpoint(pickled)
    assert pickled in str(info.value) and "NotAWeight" in str(info.value)
    assert "weights_only` set to `False`" not in str(info.value)
    tensor = str(tmp_path / "tensor.pth")
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(UserError, match="holds a Tensor, not a dict"):
        read_checkpoint(tensor)


def test_damaged_files_are_one_line_errors_however_the_unpickler_fails(tmp_path):
    """Random bytes make torch's legacy unpickler fail in several ways (UnpicklingError, IndexError,
    KeyError, UnicodeDecodeError for these seeds); each is reported as the same one-line UserError."""
    failures = set()
    for seed in range(60):
        path = tmp_path / f"damaged{seed}.pth"
        path.write_bytes(random.Random(seed).randbytes(1000))
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # what torch raises, for the record
            failures.add(type(exc).__name__)
        with pytest.raises(UserError, match="is not a readable PyTorch checkpoint") as info:
            read_checkpoint(str(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert {"UnpicklingError", "IndexError"} <= failures
