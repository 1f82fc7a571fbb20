"""The checkpoint reader: the format is detected once and reported with what the file holds; foreign,
hostile and damaged files are one-line errors without unsafe advice."""

import random

import pytest
import torch

from model import checkpoint_record, make_model, read_checkpoint
from model.checkpoint import OURS, RELEASED
from tests.conftest import tiny_config
from tests.model.released_reference import released_state_dict
from utils.errors import UserError
from utils.files import atomic_save


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


def test_the_format_is_detected_once_and_carried(tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, str(tmp_path))
    model = make_model(cfg, 8)
    final = str(tmp_path / "model_final.pth")
    atomic_save(checkpoint_record(model, 8, cfg.dump(), 2), final)
    ours = read_checkpoint(final)
    assert (ours.format, ours.num_classes, ours.epoch, ours.config, ours.training) == (OURS, 8, 2, cfg.dump(), None)
    assert ours.state.keys() == model.state_dict().keys()
    last = str(tmp_path / "last.pth")
    atomic_save({**checkpoint_record(model, 8, cfg.dump(), 2), "optimizer": {"state": {}}, "rng": {}}, last)
    assert read_checkpoint(last).training == {"optimizer": {"state": {}}, "rng": {}}

    released = str(tmp_path / "released.pth")
    state, _ = released_state_dict(16, 1, 2, 8, (2, 2), num_classes=5, vehicle=False)
    torch.save({f"module.{k}": v for k, v in state.items()}, released)
    theirs = read_checkpoint(released)
    assert (theirs.format, theirs.num_classes, theirs.epoch, theirs.config) == (RELEASED, 5, None, None)
    assert not any(k.startswith("module.") for k in theirs.state)

    torch.save({"format": "mhcf", "epoch": 1}, str(tmp_path / "empty.pth"))
    with pytest.raises(UserError, match="without its model weights"):
        read_checkpoint(str(tmp_path / "empty.pth"))
    torch.save({"weight": torch.zeros(2)}, str(tmp_path / "foreign.pth"))
    with pytest.raises(UserError, match="neither ours nor the authors' released format"):
        read_checkpoint(str(tmp_path / "foreign.pth"))
