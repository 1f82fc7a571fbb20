"""The training state of last.pth: generator states round-trip through a weights_only checkpoint; the
temporaries of killed writes are recognised and removed, nothing else."""

import random

import numpy as np
import torch

from processor.state import device_rng_state, remove_stale_temporaries, rng_state, set_rng_state
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
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"], torch.device("cpu"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_each_process_restores_its_own_gpu_generator_and_skips_a_mismatch(tmp_path, monkeypatch, caplog):
    """Saved by 2 processes (one GPU each), resumed by 2: each takes its own state; resumed by 1 (fewer
    GPUs): the GPU generator keeps its seed, with a warning, where restoring every saved device crashed.
    CUDA's generator functions are faked by a state per device index."""
    generators = {0: torch.full((16,), 7, dtype=torch.uint8), 1: torch.full((16,), 9, dtype=torch.uint8)}
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: generators[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append(
        (torch.device(device).index, state.tolist())))
    saved_states = [device_rng_state(torch.device("cuda", rank)) for rank in range(2)]   # gathered by rank 0
    atomic_save({"rng": rng_state(saved_states)}, str(tmp_path / "rng.pth"))
    state = torch.load(tmp_path / "rng.pth", weights_only=True)["rng"]
    set_rng_state(state, torch.device("cuda", 1), rank=1, world_size=2)
    assert restored == [(1, [9] * 16)]
    restored.clear()
    with caplog.at_level("WARNING"):
        set_rng_state(state, torch.device("cuda", 0), rank=0, world_size=1)
    assert restored == [] and "2 cuda generator state(s) for 1 process(es)" in caplog.text


def test_only_checkpoint_temporaries_are_removed(tmp_path):
    names = [".last.pth.a1b2c3.tmp", ".model_final.pth.x.tmp", ".results.json.x.tmp", "last.pth", ".hidden.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(remove_stale_temporaries(str(tmp_path))) == [".last.pth.a1b2c3.tmp", ".model_final.pth.x.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.tmp", ".results.json.x.tmp", "last.pth"]
