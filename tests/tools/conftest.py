"""A tiny training-output folder (random-init model of the tiny config) shared by the tools' tests."""

import os

import pytest
import torch

from model import make_model
from processor.checkpoint import atomic_save, model_checkpoint
from tests.conftest import tiny_config


@pytest.fixture(scope="session")
def tiny_run(tiny_root, tmp_path_factory) -> str:
    """``<run>/model_final.pth`` and ``<run>/config.yaml`` as ``train.py`` leaves them (untrained weights)."""
    run = str(tmp_path_factory.mktemp("run"))
    cfg = tiny_config(tiny_root, run)
    torch.manual_seed(0)
    model = make_model(cfg, num_classes=8)
    atomic_save(model_checkpoint(model, 8, cfg.dump(), 0), os.path.join(run, "model_final.pth"))
    with open(os.path.join(run, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    return run
