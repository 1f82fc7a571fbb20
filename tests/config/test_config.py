import glob
import os
import re

import pytest
import yaml

from config import get_default_config, load_config
from utils.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*", "*.yml"))))
def test_every_config_file_merges_and_lists_only_what_differs(path):
    cfg = load_config(path)
    dataset = os.path.basename(os.path.dirname(path))
    assert dataset == cfg.DATASETS.NAMES
    assert os.path.basename(cfg.OUTPUT_DIR.rstrip("/")).startswith(dataset)
    with open(path) as f:
        listed = list(_keys(yaml.safe_load(f)))
    defaults = get_default_config()
    same = [key for key in listed if key != "DATASETS.NAMES" and _value(defaults, key) == _value(cfg, key)]
    assert not same, f"{path} repeats defaults: {same}"


def _value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_the_authors_key_names_are_aliases(tmp_path):
    path = tmp_path / "authors.yml"
    path.write_text("MODEL:\n  DIRECT: False\n  NO_MARGIN: True\nINPUT:\n  PROB: 0.3\n")
    cfg = load_config(str(path))
    assert cfg.MODEL.MODALITY_HEADS is True and cfg.MODEL.SOFT_MARGIN is True and cfg.INPUT.FLIP_PROB == 0.3
    assert "DIRECT" not in cfg.MODEL and "PROB" not in cfg.INPUT          # recorded under our names only
    cfg = load_config(str(path), ["MODEL.DIRECT", "True", "INPUT.FLIP_PROB", "0.1"])
    assert cfg.MODEL.MODALITY_HEADS is False and cfg.INPUT.FLIP_PROB == 0.1
    with pytest.raises(UserError, match="MODEL.DIRECT must be a boolean"):
        load_config(None, ["MODEL.DIRECT", "maybe"])


@pytest.mark.parametrize("file, diffusion", [("MHCF.yml", "dct"), ("MHCF_released.yml", "stencil")])
def test_benchmark_recipes(file, diffusion):
    """The authors' recipe (docs/training.md) in both configs of every benchmark; MHCF_released.yml with their
    operator and their evaluation period (every epoch, every 10 on Market-MM)."""
    persons = {"RGBNT201": (0.4, 0.8), "Market-MM": (0.5, 0.5)}
    vehicles = {"RGBNT100": (0.5, 0.8), "MSVR310": (0.0, 0.5)}
    for name, (re_prob, margin) in {**persons, **vehicles}.items():
        cfg = load_config(os.path.join(REPO, "configs", name, file))
        assert re_prob == cfg.INPUT.RE_PROB and margin == cfg.SOLVER.MARGIN and cfg.MODEL.SOFT_MARGIN is False
        assert ([256, 128] if name in persons else [128, 256]) == cfg.INPUT.SIZE_TRAIN == cfg.INPUT.SIZE_TEST
        assert cfg.MODEL.MODALITY_HEADS is (name not in persons)
        assert diffusion == cfg.MODEL.HEAT.DIFFUSION and cfg.MODEL.HEAT.NUM_CYCLES == 3
        assert (0 if diffusion == "dct" else 10 if name == "Market-MM" else 1) == cfg.SOLVER.EVAL_PERIOD
        s = cfg.SOLVER
        assert (s.OPTIMIZER_NAME, s.BASE_LR, s.BIAS_LR_FACTOR, s.WEIGHT_DECAY, s.WEIGHT_DECAY_BIAS) == (
            "Adam", 3.5e-5, 2.0, 1e-4, 1e-4)
        assert (s.SCHEDULER, s.MAX_EPOCHS, s.SCHEDULE_START, s.WARMUP_EPOCHS, s.WARMUP_FACTOR, s.WARMUP_FACTOR_OF,
                s.COSINE_MIN_FACTOR, s.COSINE_MIN_FACTOR_OF) == ("cosine", 40, 1, 5, 0.01, "base", 0.001, "base")
        assert (s.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE, s.AMP, s.SEED) == (64, 8, "fp16", 42)
        assert (cfg.INPUT.FLIP_PROB, cfg.INPUT.PADDING, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD) == (
            0.5, 10, [0.5] * 3, [0.5] * 3)
        assert cfg.MODEL.PRETRAIN_PATH == "openai" and cfg.MODEL.NAME == "ViT-B-16"


def test_overrides_are_typed():
    cfg = load_config(None, ["SOLVER.BASE_LR", "1", "TEST.FEAT_NORM", "False", "INPUT.SIZE_TRAIN", "[128,64]",
                             "INPUT.SIZE_TEST", "[128,64]", "MODEL.HEAT.DIFFUSION", "stencil", "OUTPUT_DIR", "out/x"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.TEST.FEAT_NORM is False
    assert cfg.INPUT.SIZE_TRAIN == [128, 64]
    assert cfg.MODEL.HEAT.DIFFUSION == "stencil" and cfg.OUTPUT_DIR == "out/x"


@pytest.mark.parametrize("opts, culprit", [
    (["SOLVER.BASE_LRR", "1"], "SOLVER.BASE_LRR"),
    (["NOPE.KEY", "1"], "NOPE"),
    (["SOLVER.MAX_EPOCHS", "ten"], "SOLVER.MAX_EPOCHS"),
    (["SOLVER.RESUME", "1"], "SOLVER.RESUME"),
    (["MODEL.HEAT.DIFFUSION", "fft"], "MODEL.HEAT.DIFFUSION"),
    (["TEST.MISS", "rnt"], "TEST.MISS"),
    (["TEST.MISS", "x"], "TEST.MISS"),
    (["MODEL.HEAT.ORDER", "['RGB', 'NI']"], "MODEL.HEAT.ORDER"),
    (["SOLVER.IMS_PER_BATCH", "30"], "SOLVER.IMS_PER_BATCH"),
    (["SOLVER.MAX_EPOCHS"], "KEY VALUE"),
])
def test_bad_overrides_name_the_key(opts, culprit):
    with pytest.raises(UserError, match=re.escape(culprit)):
        load_config(None, opts)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("SOLVER:\n  BASE_LR: 0.1\n  WARMUP_ITER: 5\n")
    with pytest.raises(UserError, match=r"bad\.yml: unknown config key SOLVER\.WARMUP_ITER$"):
        load_config(str(path))
    with pytest.raises(UserError, match="config file not found"):
        load_config(str(tmp_path / "missing.yml"))


def _keys(node, prefix=""):
    for name, value in node.items():
        if hasattr(value, "items"):
            yield from _keys(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_every_key_is_documented_with_a_comment():
    with open(os.path.join(REPO, "config", "defaults.py")) as f:
        source = f.read().splitlines()
    for key in _keys(get_default_config()):
        line = next(i for i, text in enumerate(source) if text.startswith(f"_C.{key} ="))
        above = line - 1
        while source[above].startswith("_C.") and "CN()" not in source[above]:
            above -= 1  # keys declared in a block share the comment above the block
        assert source[above].startswith("#"), f"{key} has no comment"
