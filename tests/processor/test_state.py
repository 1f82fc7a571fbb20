"""The training state of last.pth: generator states round-trip through a weights_only checkpoint; the
temporaries of killed writes are recognised and removed, nothing else."""

import random

import numpy as np
import torch

from processor.state import remove_stale_temporaries, rng_state, set_rng_state
from utils.files import atomic_save


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    atomic_save({"rng": rng_state()}, str(tmp_path / "rng.pth"))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_only_checkpoint_temporaries_are_removed(tmp_path):
    names = [".last.pth.a1b2c3.tmp", ".model_final.pth.x.tmp", ".results.json.x.tmp", "last.pth", ".hidden.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(remove_stale_temporaries(str(tmp_path))) == [".last.pth.a1b2c3.tmp", ".model_final.pth.x.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.tmp", ".results.json.x.tmp", "last.pth"]
