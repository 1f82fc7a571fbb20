"""Training for missing modalities end to end: train.py with INPUT.MODALITY_DROPOUT trains on every sample
complete and as a copy that lost modalities, and mines the triplets among the samples that keep the same
modalities."""

import json
import os

import pytest
import torch

from loss import presence_groups
from processor import trainer
from processor.cli import run_cli
from tests.conftest import REPO, kept_logging

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_py_groups_the_triplets_by_the_modalities_kept(small_root, tmp_path, monkeypatch):
    seen = []

    def spy(present, modalities):
        groups = presence_groups(present, modalities)
        seen.append(groups)
        return groups

    monkeypatch.setattr(trainer, "presence_groups", spy)
    argv = ["--config_file", os.path.join(REPO, "configs", "Synthetic", "MHCF_robust.yml"), "DATASETS.ROOT_DIR",
            small_root, "OUTPUT_DIR", str(tmp_path / "run"), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.IMS_PER_BATCH", "16", "DATALOADER.NUM_INSTANCE", "4", "SOLVER.MAX_EPOCHS", "1"]
    with kept_logging():
        run_cli(trainer.train, "train.py", argv)
    assert len(seen) == 1 and seen[0].shape == (32,)                 # one batch: 16 samples and their copies
    assert torch.all(seen[0][:16] == 7)                              # complete: RGB, NI and TI (bits 0, 1, 2)
    assert set(seen[0][16:].tolist()) <= {1, 2, 3, 4, 5, 6}          # every copy lost one or two modalities
    with open(tmp_path / "run" / "test_results.json") as f:
        assert 0 <= json.load(f)["mAP"] <= 100
