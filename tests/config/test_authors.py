"""Configs written for the authors' repository: their RGBNT201 YAML as published loads, with the list of what
was mapped in the run's log; settings that do not map are refused together, in one message.

``authors_RGBNT201_MHCF.yml`` is the file as published (repository liuzhaojun-zwd/MHCF, commit 05c88c4f,
``configs/RGBNT201/MHCF.yml``), byte for byte.
"""

import os

import pytest

from config import load_config, mapped_settings
from processor import trainer
from processor.cli import run_cli
from tests.conftest import kept_logging
from utils.errors import UserError

AUTHORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "authors_RGBNT201_MHCF.yml")


def test_the_published_rgbnt201_config_loads_with_everything_mapped():
    cfg = load_config(AUTHORS)
    assert (cfg.MODEL.NAME, cfg.MODEL.MODALITY_HEADS, cfg.MODEL.SOFT_MARGIN, cfg.MODEL.LABEL_SMOOTHING) == \
        ("ViT-B-16", False, False, 0.1)
    assert (cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR) == ("RGBNT201", "/root/shared-nvme/data/")
    assert (cfg.INPUT.FLIP_PROB, cfg.INPUT.RE_PROB, cfg.SOLVER.WARMUP_EPOCHS) == (0.5, 0.4, 5)
    assert cfg.SOLVER.STEPS == [20, 50]
    assert (cfg.TEST.RE_RANKING, cfg.TEST.FEAT_NORM, cfg.TEST.IMS_PER_BATCH) == (False, True, 256)
    notes = [n.split(": ", 1)[1] for n in mapped_settings(cfg)]
    assert notes == [
        "MODEL.PRETRAIN_CHOICE 'imagenet' left out: the backbone starts from MODEL.PRETRAIN_PATH (OpenAI's CLIP)",
        "MODEL.METRIC_LOSS_TYPE 'triplet' left out: ID + triplet losses, as here",
        "MODEL.IF_LABELSMOOTH 'on' -> MODEL.LABEL_SMOOTHING 0.1",
        "MODEL.IF_WITH_CENTER 'no' left out: no center loss, as here",
        "MODEL.NO_MARGIN False -> MODEL.SOFT_MARGIN False",
        "MODEL.DEVICE_ID \"('0')\" left out: MODEL.DEVICE 'auto' uses cuda:0 when there is a GPU",
        "MODEL.STRIDE_SIZE [16, 16] left out: non-overlapping 16-pixel patches, as ViT-B-16 here",
        "MODEL.DIRECT 1 -> MODEL.MODALITY_HEADS False",
        "INPUT.PROB 0.5 -> INPUT.FLIP_PROB 0.5",
        "DATASETS.NAMES \"('RGBNT201')\" -> 'RGBNT201'",
        "DATASETS.ROOT_DIR \"('/root/shared-nvme/data/')\" -> '/root/shared-nvme/data/'",
        "DATALOADER.SAMPLER 'softmax_triplet' left out: the P x K identity sampler, as here",
        "SOLVER.WARMUP_ITERS 5 -> SOLVER.WARMUP_EPOCHS 5",
        "SOLVER.STEPS '(20, 50)' -> [20, 50]",
        "TEST.RE_RANKING 'no' -> False",
        "TEST.FEAT_NORM 'yes' -> True",
    ]
    assert mapped_settings(load_config()) == []  # our own terms need no mapping


def test_train_py_logs_the_mapping_and_the_dataset_error_before_any_config_dump(tmp_path, capsys):
    out = tmp_path / "out"
    with kept_logging(), pytest.raises(SystemExit) as exit_info:
        run_cli(trainer.train, "train.py", ["--config_file", AUTHORS, "DATASETS.ROOT_DIR", str(tmp_path / "none"),
                                           "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu"])
    assert exit_info.value.code == 2
    assert "RGBNT201: dataset folder not found" in capsys.readouterr().err
    log = (out / "train.log").read_text()
    assert "read 16 settings written for the authors' repository" in log and "MODEL.DIRECT 1 ->" in log
    # their TEST.WEIGHT is explained, not silently ignored
    assert "train.py does not read TEST.WEIGHT (/root/shared-nvme/ProxyTTT/logs_pro/rgbnt201/Heat/817.pth" in log
    assert "error: RGBNT201: dataset folder not found" in log          # the fatal error reaches the log file
    assert "running with config" not in log                             # no 95-line dump before it


def test_settings_that_do_not_map_are_refused_together(tmp_path):
    path = tmp_path / "theirs.yml"
    path.write_text("MODEL:\n  PRETRAIN_CHOICE: 'self'\n  IF_WITH_CENTER: 'yes'\n  DEVICE_ID: ('1')\n"
                    "  SIE_CAMERA: True\n  DIRECT: 0\nSOLVER:\n  MAX_EPOCHS: 'ten'\n")
    with pytest.raises(UserError) as info:
        load_config(str(path))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: 5 settings do not map")
    for expected in ("MODEL.PRETRAIN_CHOICE 'self': to start from a whole trained model set MODEL.INIT_WEIGHTS",
                     "MODEL.IF_WITH_CENTER 'yes': there is no center loss here",
                     "MODEL.DEVICE_ID \"('1')\": set MODEL.DEVICE cuda:N for GPU N",
                     "unknown config key MODEL.SIE_CAMERA", "SOLVER.MAX_EPOCHS must be int"):
        assert expected in message
    with pytest.raises(UserError, match="command line: 2 settings do not map .*MODEL.NOPE.*SOLVER.NOPE"):
        load_config(None, ["MODEL.NOPE", "1", "SOLVER.NOPE", "2"])


def test_the_other_published_spellings(tmp_path):
    path = tmp_path / "market.yml"
    path.write_text("MODEL:\n  DIRECT: 0\nDATASETS:\n  NAMES: ('Market1501-MM')\nTEST:\n  MISS: \"nothing\"\n")
    cfg = load_config(str(path))
    assert (cfg.MODEL.MODALITY_HEADS, cfg.DATASETS.NAMES, cfg.TEST.MISS) == (True, "Market-MM", "none")
    assert load_config(None, ["TEST.RE_RANKING", "yes"]).TEST.RE_RANKING is True
    with pytest.raises(UserError, match="SOLVER.RESUME must be bool"):   # only the keys they write so
        load_config(None, ["SOLVER.RESUME", "yes"])
