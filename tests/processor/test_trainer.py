"""The training engine: exact resumption after SIGKILL, non-finite losses, mixed precision, TensorBoard."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from processor import train
from processor.checkpoint import read_checkpoint
from tests.conftest import REPO, tiny_config

# a smaller input (4 x 2 patches) keeps each epoch well under a second; drop path makes the model draw
# from the global random stream, which the loaders and evaluation between epochs must leave alone
FAST = ["INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.SIZE_TEST", "[32, 16]", "INPUT.PADDING", "2",
        "MODEL.DROP_PATH", "0.2", "SOLVER.MAX_EPOCHS", "3"]


@pytest.fixture
def restore_logging():
    """train() configures the root logger for its run; give pytest its handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _weights(path: str) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def _kill_during_epoch(config_file: str, output_dir: str, epoch: int, timeout: float = 120) -> None:
    """Run train.py and SIGKILL it as soon as its log shows the first iteration of ``epoch``."""
    log = os.path.join(output_dir, "train.log")
    proc = subprocess.Popen([sys.executable, "train.py", "--config_file", config_file], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    try:
        while True:
            if os.path.exists(log):
                with open(log) as f:
                    if f"epoch {epoch} iter 1/" in f.read():
                        break
            if proc.poll() is not None:
                pytest.fail(f"train.py ended before epoch {epoch}: {proc.stderr.read().decode()[-2000:]}")
            if time.time() > deadline:
                pytest.fail(f"train.py did not reach epoch {epoch} in {timeout} s")
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize(("workers", "eval_period"), [(0, 1), (2, 0)])
def test_resume_after_sigkill_equals_uninterrupted_run(tiny_root, tmp_path, workers, eval_period, restore_logging):
    """Killed with SIGKILL in epoch 2 and resumed: bit-identical final weights. Main-process loading with
    an evaluation after each epoch, and persistent worker processes (created at the first epoch of each
    run, so at different epochs in the two runs)."""
    opts = [*FAST, "DATALOADER.NUM_WORKERS", str(workers), "SOLVER.EVAL_PERIOD", str(eval_period)]
    full = tiny_config(tiny_root, str(tmp_path / "full"), *opts)
    train(full)

    killed_dir = str(tmp_path / "killed")
    config_file = str(tmp_path / "killed.yaml")
    with open(config_file, "w") as f:
        f.write(tiny_config(tiny_root, killed_dir, *opts).dump())
    _kill_during_epoch(config_file, killed_dir, epoch=2)
    first = read_checkpoint(os.path.join(killed_dir, "last.pth"))
    assert first["epoch"] == 1, "killed too late"
    assert not os.path.exists(os.path.join(killed_dir, "model_final.pth"))
    train(tiny_config(tiny_root, killed_dir, *opts, "SOLVER.RESUME", "True"))

    uninterrupted = _weights(os.path.join(full.OUTPUT_DIR, "model_final.pth"))
    resumed = _weights(os.path.join(killed_dir, "model_final.pth"))
    assert uninterrupted.keys() == resumed.keys()
    different = [k for k in uninterrupted if not torch.equal(uninterrupted[k], resumed[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    # and the resumed run did train: its weights moved away from the first epoch's
    assert not torch.equal(first["model"]["heads.ori.classifier.weight"], resumed["heads.ori.classifier.weight"])
