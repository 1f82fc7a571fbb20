"""A subset of the modalities end to end: a dataset with RGB and NI folders only is trained and evaluated with
MODEL.MODALITIES [RGB, NI] (TEST.MISS over two modalities); train.py and test.py on one folder keep both
records."""

import json
import os
import shutil

import pytest

from datasets import make_dataset
from processor import tester, trainer
from processor.cli import run_cli
from tests.conftest import REPO, kept_logging
from utils.errors import UserError

SYNTHETIC = os.path.join(REPO, "configs", "Synthetic", "MHCF.yml")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_two_modalities_trained_and_evaluated_both_records_kept(small_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(os.path.join(small_root, "Synthetic"), root / "Synthetic",
                    ignore=shutil.ignore_patterns("TI"))                       # no TI folder anywhere
    with pytest.raises(UserError, match="folder not found: .*TI"):
        make_dataset("Synthetic", str(root))                                    # all three: TI is demanded
    assert make_dataset("Synthetic", str(root), ["NI", "RGB"]).modalities == ("NI", "RGB")

    out = tmp_path / "run"
    base = ["--config_file", SYNTHETIC, "DATASETS.ROOT_DIR", str(root), "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "16", "DATALOADER.NUM_INSTANCE", "4",
            "MODEL.MODALITIES", "['RGB', 'NI']", "MODEL.HEAT.ORDER", "['RGB', 'NI']"]
    with kept_logging():
        run_cli(trainer.train, "train.py", [*base, "SOLVER.MAX_EPOCHS", "1"])
    log = (out / "train.log").read_text()
    assert "modalities RGB, NI, protocol" in log                                # the statistics table's header
    with open(out / "test_results.json") as f:
        trained = json.load(f)
    assert (trained["command"], trained["epoch"], trained["modalities"]) == ("train.py", 1, ["RGB", "NI"])

    weight = str(out / "model_final.pth")
    with kept_logging():
        run_cli(tester.test, "test.py", [*base, "TEST.WEIGHT", weight, "TEST.MISS", "all"])
    with open(out / "test_results.json") as f:
        assert json.load(f) == trained                                          # the training run's record kept
    with open(out / "test_results.test_model_final_miss-all.json") as f:
        swept = json.load(f)
    assert set(swept["settings"]) == {"none", "r", "n"}                          # RGB missing, NI missing
    assert swept["settings"]["none"]["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)
    assert swept["average_missing"]["mAP"] == pytest.approx(
        (swept["settings"]["r"]["mAP"] + swept["settings"]["n"]["mAP"]) / 2)
    test_log = (out / "test.log").read_text()
    assert "wrote " + str(out / "test_results.test_model_final_miss-all.json") in test_log
