"""MODEL.DEVICE under launchers with GPUs (faked: torch.cuda's queries patched), node-local start-up order,
and TF32 kept out of evaluation."""

import pytest
import torch

import processor.distributed as distributed
from processor import evaluation
from processor.device import resolve_device, tf32
from processor.distributed import DistInfo, main_process_first
from tests.conftest import tiny_config
from utils.errors import UserError


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n)``: this process sees n CUDA devices; returns the list of devices it was told to use."""
    chosen = []

    def visible(count: int) -> list:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
        return chosen

    return visible


def test_each_process_of_a_node_takes_the_gpu_of_its_local_rank(gpus):
    chosen = gpus(4)
    assert [resolve_device(name, local_rank=r, local_world_size=4) for name, r in
            (("cuda", 0), ("auto", 3))] == [torch.device("cuda", 0), torch.device("cuda", 3)]
    assert chosen == [torch.device("cuda", 0), torch.device("cuda", 3)]


def test_a_launcher_showing_each_process_one_gpu(gpus):
    """SLURM --gpus-per-task=1: LOCAL_RANK 1, but the process sees one device, its own (device 0)."""
    gpus(1)
    assert resolve_device("cuda", local_rank=1, local_world_size=2) == torch.device("cuda", 0)
    assert resolve_device("cuda:0", local_rank=1, local_world_size=2) == torch.device("cuda", 0)


def test_device_mistakes_under_torchrun_are_one_line(gpus):
    gpus(2)
    with pytest.raises(UserError, match=r"MODEL.DEVICE cuda:0 would put all 2 processes of this node on one GPU; "
                                        r"use MODEL.DEVICE cuda"):
        resolve_device("cuda:0", local_rank=1, local_world_size=2)
    with pytest.raises(UserError, match="LOCAL_RANK 3 but 2 GPUs are visible to this process"):
        resolve_device("cuda", local_rank=3, local_world_size=4)
    with pytest.raises(UserError, match="MODEL.DEVICE cuda:5: only 2 GPU"):
        resolve_device("cuda:5")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)   # one process: any device it names


@pytest.mark.parametrize(("rank", "local_rank", "first"), [(0, 0, True), (1, 1, False), (8, 0, True)])
def test_the_first_process_of_every_node_goes_first(monkeypatch, rank, local_rank, first):
    """Multi-node with node-local caches: local rank 0 of each node (global rank 0 or 8 of 2 x 8) fetches
    before its node's others, which wait for every node's first process (one all-reduce per process)."""
    events = []
    monkeypatch.setattr(distributed, "_all_ok", lambda info, ok: events.append("barrier") or True)
    with main_process_first(DistInfo(rank=rank, world_size=16, local_rank=local_rank)):
        events.append("block")
    assert events == (["block", "barrier"] if first else ["barrier", "block"])


class _Recorder:
    """Stands in for the model and the dataset: records whether TF32 is allowed when it is called."""

    modalities = ["RGB", "NI"]
    query = gallery = []

    def __init__(self):
        self.seen = []

    def _record(self):
        self.seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))

    def eval(self):
        pass

    def encode(self, batch):
        self._record()
        return dict(batch)

    def fuse(self, tokens):
        self._record()
        return tokens, None

    def test_feature(self, features):
        return torch.cat(list(features.values()), 1)

    def eval_metadata(self, query, gallery):
        return {}


def test_evaluation_computes_in_full_float32_whatever_tf32_says(tiny_root, tmp_path, monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(evaluation, "evaluate_features", lambda *a, **k: recorder._record())
    cfg = tiny_config(tiny_root, str(tmp_path))
    with tf32(True):
        evaluation.extract_features(recorder, [{"RGB": torch.zeros(2, 3), "NI": torch.ones(2, 3)}],
                                    lambda batch: batch, ["none"], progress=False)
        evaluation.score_features(cfg, recorder, {"none": torch.zeros(2, 4)}, torch.device("cpu"))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert recorder.seen == [(False, False)] * 3   # encode, fuse, the distances
