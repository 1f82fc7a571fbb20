"""Fine-tuning (MODEL.INIT_WEIGHTS) through train.py: a checkpoint in the authors' released format, trained on
other identities, starts a training run on a small Synthetic set; everything but the classifiers is loaded."""

import os
import re

import pytest
import torch

from config import load_config
from model import make_model, read_checkpoint
from model.released import convert_released_state_dict
from processor import trainer
from processor.cli import run_cli
from tests.conftest import REPO, kept_logging, tiny_config
from tests.model.released_reference import released_state_dict

SYNTHETIC = os.path.join(REPO, "configs", "Synthetic", "MHCF.yml")
CLASSIFIERS = [f"heads.{name}.classifier.weight" for name in ("ori", "heat_cls", "heat_pat")]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fine_tune_from_a_released_checkpoint_with_other_identities(small_root, tmp_path):
    # the released layout at the size of ViT-Mini-8 (128-d, 4 blocks, patch 8) on 64 x 32 images, 5 identities
    state, _ = released_state_dict(width=128, layers=4, heads=4, patch=8, grid=(8, 4), num_classes=5, vehicle=False)
    released = str(tmp_path / "released.pth")
    torch.save(state, released)
    out = tmp_path / "run"
    # learning rate 0: the final weights are the loaded ones, so what was loaded can be checked exactly
    argv = ["--config_file", SYNTHETIC, "DATASETS.ROOT_DIR", small_root, "OUTPUT_DIR", str(out),
            "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "16",
            "DATALOADER.NUM_INSTANCE", "4", "SOLVER.MAX_EPOCHS", "1", "SOLVER.BASE_LR", "0.0",
            "MODEL.HEAT.DIFFUSION", "stencil", "MODEL.INIT_WEIGHTS", released, "TEST.WEIGHT", released]
    with kept_logging():
        run_cli(trainer.train, "train.py", argv)

    log = (out / "train.log").read_text()
    loaded = re.search(r"MODEL.INIT_WEIGHTS: loaded (\d+) of (\d+) tensors from (.*)", log)
    assert loaded and loaded.group(3).startswith(f"{released} (the authors' released format)")
    assert int(loaded.group(2)) - int(loaded.group(1)) == 3
    assert f"re-initialised: {', '.join(CLASSIFIERS)} (the checkpoint's classifiers have 5 identities, this " \
           f"dataset 4)" in log
    assert "train.py does not read TEST.WEIGHT" in log

    cfg = tiny_config(small_root, str(out), "MODEL.HEAT.DIFFUSION", "stencil")
    expected = convert_released_state_dict(state, make_model(cfg, 5, load_pretrained=False), released)
    final = read_checkpoint(str(out / "model_final.pth"))
    assert final.num_classes == 4
    for key, value in final.state.items():
        if key in CLASSIFIERS:
            assert value.shape == (4, 3 * 128) and 0 < value.std() < 0.01   # fresh: std 0.001 initialisation
        elif "running_" not in key and "num_batches" not in key:             # BN statistics move in training
            assert torch.equal(value, expected[key]), key


def test_fine_tune_from_our_checkpoint_with_the_same_identities(tiny_root, trained_run, tmp_path, caplog):
    weight = os.path.join(trained_run, "model_final.pth")
    cfg = load_config(os.path.join(trained_run, "config.yaml"), ["MODEL.INIT_WEIGHTS", weight])
    with caplog.at_level("INFO", logger="model"):
        model = make_model(cfg, 8)
    assert "(ours, epoch 2): the whole model (8 identities, as this dataset)" in caplog.text
    saved = read_checkpoint(weight).state
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
