"""Shared fixtures: a miniature RGBNT201-layout tree, a tiny config that trains in seconds on CPU, and one
training run of it shared by the end-to-end tests."""

import logging
import os
from contextlib import contextmanager

import pytest
import torch

from config import load_config
from datasets.synthetic import generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test (and, through OMP_NUM_THREADS, for the scripts it starts):
    tiny models gain nothing from more, and on a busy machine idle-spinning OpenMP threads cost more than
    the work (a several-fold slow-down of the training tests under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> str:
    """A data root holding ``Synthetic/`` with 8 train ids and 4 test ids, 2 shots per camera (4 cameras)."""
    root = str(tmp_path_factory.mktemp("data"))
    generate(os.path.join(root, "Synthetic"), train_ids=8, test_ids=4, shots_per_camera=2)
    return root


@pytest.fixture(scope="session")
def small_root(tmp_path_factory) -> str:
    """A data root holding ``Synthetic/`` with 4 train ids and 2 test ids, 1 shot per camera (4 cameras): one
    training batch of 16 samples, for end-to-end runs that need a training run of their own."""
    root = str(tmp_path_factory.mktemp("small"))
    generate(os.path.join(root, "Synthetic"), train_ids=4, test_ids=2, shots_per_camera=1)
    return root


def tiny_config(root: str, output_dir: str, *opts, freeze: bool = True):
    """The Synthetic config shrunk for tests: 2 epochs of 2 iterations-worth of data, no workers."""
    base = ["DATASETS.ROOT_DIR", root, "OUTPUT_DIR", output_dir, "MODEL.DEVICE", "cpu",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "16", "DATALOADER.NUM_INSTANCE", "4",
            "SOLVER.MAX_EPOCHS", "2", "SOLVER.WARMUP_EPOCHS", "1", "SOLVER.LOG_PERIOD", "1",
            "TEST.IMS_PER_BATCH", "32"]
    return load_config(os.path.join(REPO, "configs", "Synthetic", "MHCF.yml"), base + list(opts), freeze=freeze)


@contextmanager
def kept_logging():
    """train() and test() configure the root logger for their run; give pytest its handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            if handler not in handlers:
                handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


@pytest.fixture(scope="session")
def trained_run(tiny_root, tmp_path_factory) -> str:
    """The output folder of one ``train()`` of the tiny config, shared by the end-to-end tests: 2 epochs,
    evaluated (with the modal-bias report) after each, a snapshot per epoch, started in a folder holding
    the temporary file of a save killed before its rename. Tests read it; none may write into it."""
    from processor.trainer import train

    out = str(tmp_path_factory.mktemp("trained") / "run")
    cfg = tiny_config(tiny_root, out, "SOLVER.EVAL_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1",
                      "TEST.MODAL_BIAS", "True")
    os.makedirs(out)
    with open(os.path.join(out, ".last.pth.k1ll3d.tmp"), "wb") as f:   # left by a run killed mid-save
        f.write(b"PK partial")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with kept_logging():
            train(cfg)
    finally:
        torch.set_num_threads(threads)
    return out
