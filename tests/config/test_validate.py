"""Every key's valid range and role, declared once (config/validate.py): every key has a rule, every value out
of range is one line naming the key and where the value came from, and ``train.py`` / ``test.py`` refuse it
before torch is imported (real subprocesses: each costs ~0.1 s because nothing heavy is loaded)."""

import os
import subprocess
import sys

import pytest

from config import get_default_config, load_config, saved_values
from config.validate import LENGTH, MODEL, RULES, RUN, TRAINING, flat_items, model_differences, resume_conflict
from utils.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTHETIC = os.path.join(REPO, "configs", "Synthetic", "MHCF.yml")


def test_every_key_has_exactly_one_rule_and_the_defaults_pass_it():
    keys = [key for key, _ in flat_items(get_default_config())]
    assert sorted(keys) == sorted(RULES), (set(keys) ^ set(RULES))
    for key, value in flat_items(get_default_config()):
        assert RULES[key].check(value) is None, key
    assert {rule.role for rule in RULES.values()} == {"run", "eval", "model", "training", "length"}


# A value out of range for every kind of rule (and the cross-key rules), with the phrase the error must hold.
OUT_OF_RANGE = [
    ("SOLVER.MAX_EPOCHS", "0", ">= 1"),
    ("SOLVER.MAX_EPOCHS", "-3", ">= 1"),
    ("SOLVER.IMS_PER_BATCH", "0", ">= 1"),
    ("TEST.IMS_PER_BATCH", "0", ">= 1"),
    ("TEST.EVAL_CHUNK", "0", ">= 1"),
    ("DATALOADER.NUM_WORKERS", "-1", ">= 0"),
    ("DATALOADER.NUM_INSTANCE", "0", ">= 1"),
    ("SOLVER.LOG_PERIOD", "0", ">= 1"),
    ("SOLVER.EVAL_PERIOD", "-1", ">= 0"),
    ("SOLVER.CHECKPOINT_PERIOD", "-2", ">= 0"),
    ("INPUT.PADDING", "-1", ">= 0"),
    ("INPUT.SIZE_TRAIN", "[0, 32]", "[height, width]"),
    ("INPUT.SIZE_TRAIN", "[64]", "[height, width]"),
    ("INPUT.PIXEL_STD", "[0.5, 0.0, 0.5]", "each > 0"),
    ("INPUT.PIXEL_MEAN", "[0.5, 0.5]", "3 values"),
    ("INPUT.FLIP_PROB", "1.5", "[0, 1]"),
    ("SOLVER.BASE_LR", "-1e-3", ">= 0"),
    ("SOLVER.WARMUP_FACTOR", "-0.1", "[0, 1]"),
    ("SOLVER.MOMENTUM", "1.0", "[0, 1)"),
    ("SOLVER.STEPS", "[30, 20]", "increasing"),
    ("SOLVER.SEED", "-1", "2**32"),
    ("MODEL.DEVICE", "gpu", "cuda:N"),
    ("MODEL.DEVICE", "cuda:x", "cuda:N"),
    ("MODEL.HEAT.NUM_CYCLES", "-1", ">= 0"),
    ("MODEL.HEAT.TAU", "0.0", "> 0"),
    ("MODEL.LABEL_SMOOTHING", "1.0", "[0, 1)"),
    ("MODEL.MODALITIES", "['RGB', 'RGB']", "distinct"),
    ("MODEL.MODALITIES", "['RGB', 'NI', 'N2']", "distinct letters"),
    ("MODEL.HEAT.ORDER", "['RGB', 'NI', 'XX']", "permutation"),
    ("TEST.MISS", "rnt", "at least one modality left"),
    ("TEST.CENTRE_VIEWS", "True", "any-to-any retrieval only: set TEST.QUERY_MISS"),
    ("TEST.RE_RANKING_K1", "0", ">= 1"),
    ("INPUT.SIZE_TEST", "[128, 64]", "must equal INPUT.SIZE_TRAIN"),
    ("OUTPUT_DIR", "''", "must not be empty"),
    ("DATASETS.ROOT_DIR", "' '", "must not be empty"),
]


@pytest.mark.parametrize("key, value, phrase", OUT_OF_RANGE)
def test_out_of_range_values_name_key_and_source(key, value, phrase):
    with pytest.raises(UserError) as error:
        load_config(SYNTHETIC, [key, value])
    message = str(error.value)
    assert message.startswith(f"command line: {key} ") and phrase in message and "\n" not in message


def test_a_file_value_names_the_file_and_cross_rules_name_the_other_key(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("SOLVER:\n  BASE_LR: .nan\n")
    with pytest.raises(UserError, match=rf"^{path}: SOLVER.BASE_LR must be >= 0; got nan$"):
        load_config(str(path))
    path.write_text("DATALOADER:\n  NUM_INSTANCE: 3\n")  # the default batch (64) is then no multiple
    with pytest.raises(UserError, match=rf"^{path}: SOLVER.IMS_PER_BATCH must be a multiple of "
                                        r"DATALOADER.NUM_INSTANCE \(3\); got 64 \(its default\)$"):
        load_config(str(path))
    with pytest.raises(UserError, match="ID_LOSS_WEIGHT and MODEL.TRIPLET_LOSS_WEIGHT are both 0"):
        load_config(None, ["MODEL.ID_LOSS_WEIGHT", "0.0", "MODEL.TRIPLET_LOSS_WEIGHT", "0.0"])


def test_repeated_yaml_keys_and_files_that_are_not_yaml_text(tmp_path):
    sections = tmp_path / "sections.yml"
    sections.write_text("SOLVER:\n  BASE_LR: 0.1\nMODEL:\n  NAME: ViT-Mini-8\nSOLVER:\n  MAX_EPOCHS: 3\n")
    with pytest.raises(UserError, match=rf"^{sections}: SOLVER is given twice \(again at line 5\)"):
        load_config(str(sections))
    keys = tmp_path / "keys.yml"
    keys.write_text("SOLVER:\n  BASE_LR: 0.1\n  BASE_LR: 0.2\n")
    with pytest.raises(UserError, match=rf"^{keys}: SOLVER.BASE_LR is given twice \(again at line 3\)"):
        load_config(str(keys))
    binary = tmp_path / "weights.yml"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00binary")
    with pytest.raises(UserError, match=rf"^{binary}: not a text file"):
        load_config(str(binary))
    with pytest.raises(UserError, match=rf"^config file {tmp_path} is not a regular file$"):
        load_config(str(tmp_path))


def test_resume_policy_follows_the_roles():
    """A resume may change every ``run`` key, no ``model`` or ``training`` key; MAX_EPOCHS may grow only
    where the schedule does not depend on it, and never below the epochs done."""
    cfg = load_config(SYNTHETIC)
    saved = saved_values(cfg.dump())
    assert resume_conflict(cfg, saved, 5, "last.pth") is None
    examples = {"run": {"DATALOADER.NUM_WORKERS": "0", "SOLVER.LOG_PERIOD": "3", "SOLVER.EVAL_PERIOD": "2",
                        "MODEL.DEVICE": "cpu", "TEST.RE_RANKING": "True", "SOLVER.CHECKPOINT_PERIOD": "1"},
                "fixed": {"SOLVER.BASE_LR": "0.5", "SOLVER.OPTIMIZER_NAME": "SGD", "MODEL.HEAT.NUM_CYCLES": "2",
                          "SOLVER.SEED": "1", "INPUT.RE_PROB": "0.1", "SOLVER.AMP": "bf16"}}
    for key, value in examples["run"].items():
        assert RULES[key].role in (RUN, "eval")
        assert resume_conflict(load_config(SYNTHETIC, [key, value]), saved, 5, "last.pth") is None, key
    for key, value in examples["fixed"].items():
        assert RULES[key].role in (MODEL, TRAINING)
        conflict = resume_conflict(load_config(SYNTHETIC, [key, value]), saved, 5, "last.pth")
        assert conflict.startswith(f"{key} ") and "differs from last.pth's" in conflict, key
    assert RULES["SOLVER.MAX_EPOCHS"].role == LENGTH
    assert "below the 5 epochs" in resume_conflict(load_config(SYNTHETIC, ["SOLVER.MAX_EPOCHS", "4"]), saved, 5,
                                                   "last.pth")
    assert "cosine schedule" in resume_conflict(load_config(SYNTHETIC, ["SOLVER.MAX_EPOCHS", "30"]), saved, 5,
                                                "last.pth")
    multistep = load_config(SYNTHETIC, ["SOLVER.SCHEDULER", "multistep"])
    longer = load_config(SYNTHETIC, ["SOLVER.SCHEDULER", "multistep", "SOLVER.MAX_EPOCHS", "30"])
    assert resume_conflict(longer, saved_values(multistep.dump()), 5, "last.pth") is None


def test_saved_configs_from_older_versions_and_model_differences():
    cfg = load_config(SYNTHETIC, ["MODEL.HEAT.NUM_CYCLES", "2", "MODEL.HEAT.ORDER", "['TI', 'NI', 'RGB']"])
    saved = saved_values("MODEL:\n  NAME: ViT-Mini-8\n  REMOVED_KEY: 1\nSOLVER:\n  BASE_LR: 0.001\n")
    assert saved["MODEL.NAME"] == "ViT-Mini-8" and saved["SOLVER.MAX_EPOCHS"] == 40   # absent: the default
    assert "MODEL.REMOVED_KEY" not in saved
    assert model_differences(cfg, saved_values(load_config(SYNTHETIC).dump())) == {
        "MODEL.HEAT.NUM_CYCLES": (2, 3), "MODEL.HEAT.ORDER": (["TI", "NI", "RGB"], ["RGB", "NI", "TI"])}


def _run(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_scripts_refuse_bad_config_before_importing_torch(tmp_path):
    """The real scripts: exit 2, one line naming the key (or file) and its source, no traceback, nothing
    written into OUTPUT_DIR, and no torch import (each run costs about 0.1 s of CPU)."""
    out = str(tmp_path / "out")
    yaml_bad = tmp_path / "bad.yml"
    yaml_bad.write_text("SOLVER:\n  MAX_EPOCHS: 0\n")
    binary = tmp_path / "binary.yml"
    binary.write_bytes(bytes(range(256)))
    repeated = tmp_path / "repeated.yml"
    repeated.write_text("INPUT:\n  PADDING: 2\nINPUT:\n  RE_PROB: 0.1\n")
    base = ["--config_file", SYNTHETIC, "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu"]
    cases = [
        (["train.py", *base, "SOLVER.MAX_EPOCHS", "0"], "command line: SOLVER.MAX_EPOCHS must be >= 1"),
        (["train.py", *base, "SOLVER.IMS_PER_BATCH", "-4"], "command line: SOLVER.IMS_PER_BATCH must be >= 1"),
        (["train.py", *base, "DATALOADER.NUM_WORKERS", "-1"], "command line: DATALOADER.NUM_WORKERS must be >= 0"),
        (["train.py", *base, "SOLVER.LOG_PERIOD", "0"], "command line: SOLVER.LOG_PERIOD must be >= 1"),
        (["train.py", *base, "INPUT.PADDING", "-2"], "command line: INPUT.PADDING must be >= 0"),
        (["train.py", *base, "INPUT.SIZE_TRAIN", "[0, 32]"], "command line: INPUT.SIZE_TRAIN must be [height"),
        (["train.py", *base, "INPUT.PIXEL_STD", "[0.5, 0.0, 0.5]"], "command line: INPUT.PIXEL_STD must list 3"),
        (["train.py", *base, "INPUT.PIXEL_MEAN", "[0.5]"], "command line: INPUT.PIXEL_MEAN must list 3 values"),
        (["train.py", *base, "MODEL.HEAT.ORDER", "['RGB', 'NI', 'XX']"], "MODEL.HEAT.ORDER must be a permutation"),
        (["train.py", *base, "TEST.MISS", "rx"], "command line: TEST.MISS must be one of"),
        (["train.py", *base, "MODEL.DEVICE", "cuda:one"], "command line: MODEL.DEVICE must be"),
        (["train.py", *base, "TEST.IMS_PER_BATCH", "0"], "command line: TEST.IMS_PER_BATCH must be >= 1"),
        (["train.py", *base, "TEST.EVAL_CHUNK", "0"], "command line: TEST.EVAL_CHUNK must be >= 1"),
        (["train.py", *base, "INPUT.SIZE_TEST", "[32, 16]"], "INPUT.SIZE_TEST must equal INPUT.SIZE_TRAIN [64, 32]"),
        (["test.py", *base, "TEST.EVAL_CHUNK", "-1", "TEST.WEIGHT", SYNTHETIC], "TEST.EVAL_CHUNK must be >= 1"),
        (["train.py", "--config_file", str(yaml_bad), "OUTPUT_DIR", out], f"{yaml_bad}: SOLVER.MAX_EPOCHS must"),
        (["train.py", "--config_file", str(binary)], f"{binary}: not a text file"),
        (["train.py", "--config_file", str(repeated)], f"{repeated}: INPUT is given twice"),
        (["train.py", "--config_file", SYNTHETIC, "--bogus"], "error: train.py: unrecognized arguments: --bogus"),
        (["test.py", "--confg_file", SYNTHETIC], "error: test.py: "),
    ]
    procs = [_run(argv) for argv, _ in cases]
    for proc, (argv, expected) in zip(procs, cases):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, (argv, err)
    assert not os.path.exists(out)                    # refused before anything was written
