"""Mistakes on the command line: one line on stderr naming the culprit, exit code 2, no traceback."""

import logging
import os
import random
import subprocess
import sys

import pytest

from model import checkpoint_record, make_model
from processor import tester, trainer
from processor.cli import exit_on_user_error, run_cli
from tests.conftest import REPO, kept_logging, tiny_config
from utils.errors import UserError
from utils.files import atomic_save

SYNTHETIC = os.path.join(REPO, "configs", "Synthetic", "MHCF.yml")


pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, "test", argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def checkpoints(tiny_root, tmp_path):
    """A checkpoint of the tiny model, one with the released-code diffusion, one at another input size,
    and a file of random bytes."""
    paths = {}
    for name, opts in {"ours": [], "stencil": ["MODEL.HEAT.DIFFUSION", "stencil"],
                       "size": ["INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.SIZE_TEST", "[32, 16]"]}.items():
        cfg = tiny_config(tiny_root, str(tmp_path), *opts)
        paths[name] = str(tmp_path / f"{name}.pth")
        atomic_save(checkpoint_record(make_model(cfg, 8), 8, cfg.dump(), 1), paths[name])
    paths["random"] = str(tmp_path / "random.pth")
    with open(paths["random"], "wb") as f:
        f.write(random.Random(0).randbytes(1000))  # fails to unpickle (tested for many seeds elsewhere)
    return paths


def test_config_and_checkpoint_mistakes(tiny_root, tmp_path, capsys, checkpoints):
    base = ["--config_file", SYNTHETIC, "DATASETS.ROOT_DIR", tiny_root, "OUTPUT_DIR", str(tmp_path / "out"),
            "MODEL.DEVICE", "cpu"]
    line = _one_line_error(capsys, trainer.train, [*base, "SOLVER.MAX_EPOCH", "3"])
    assert "unknown config key SOLVER.MAX_EPOCH" in line
    line = _one_line_error(capsys, trainer.train, [*base, "SOLVER.MAX_EPOCHS", "abc"])
    assert "SOLVER.MAX_EPOCHS must be int" in line and "'abc'" in line
    line = _one_line_error(capsys, tester.test, base)
    assert "TEST.WEIGHT" in line
    missing = str(tmp_path / "nowhere.pth")
    line = _one_line_error(capsys, tester.test, [*base, "TEST.WEIGHT", missing])
    assert "checkpoint not found" in line and missing in line
    line = _one_line_error(capsys, tester.test, [*base, "TEST.WEIGHT", checkpoints["random"]])
    assert checkpoints["random"] in line and "not a readable PyTorch checkpoint" in line
    line = _one_line_error(capsys, tester.test, [*base, "TEST.WEIGHT", checkpoints["stencil"]])
    assert checkpoints["stencil"] in line and "does not fit the configured model" in line
    assert "missing" in line and "heat.conductivity" in line          # first differing keys named
    line = _one_line_error(capsys, tester.test, [*base, "TEST.WEIGHT", checkpoints["size"]])
    assert "shape mismatch" in line and "backbone.pos_embed (1, 9, 128) vs model (1, 33, 128)" in line

    # resuming from a last.pth of another model, or from a damaged one
    out = tmp_path / "resume"
    out.mkdir()
    resume = [*base[:4], "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu", "SOLVER.RESUME", "True"]
    atomic_save({**checkpoint_record(make_model(tiny_config(tiny_root, str(out), "MODEL.HEAT.DIFFUSION",
                                                           "stencil"), 8), 8, "", 1),
                 "optimizer": {}, "scheduler": {}, "scaler": {}, "rng": {}},
                str(out / "last.pth"))
    line = _one_line_error(capsys, trainer.train, resume)
    assert str(out / "last.pth") in line and "does not fit the configured model" in line
    os.replace(checkpoints["random"], out / "last.pth")
    line = _one_line_error(capsys, trainer.train, resume)
    assert str(out / "last.pth") in line and "not a readable PyTorch checkpoint" in line


def test_scripts_exit_2_with_one_line(tiny_root, tmp_path, checkpoints):
    """The real entry points, as a user runs them (both at once: each pays torch's import time)."""
    cases = [
        (["train.py", "--config_file", SYNTHETIC, "SOLVER.NOPE", "1"], "unknown config key SOLVER.NOPE"),
        (["test.py", "--config_file", SYNTHETIC, "DATASETS.ROOT_DIR", tiny_root, "MODEL.DEVICE", "cpu",
          "OUTPUT_DIR", str(tmp_path / "out"), "TEST.WEIGHT", checkpoints["stencil"]], "does not fit"),
    ]
    procs = [subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for argv, _ in cases]
    for proc, (_, expected) in zip(procs, cases):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2
        assert len(err.strip().splitlines()) == 1 and expected in err and "Traceback" not in err


def test_runs_append_to_a_log_with_a_header_each_and_end_with_their_error(tmp_path, capsys):
    from utils.logger import setup_logging

    def fail(message):
        def main():
            setup_logging(str(tmp_path), "run.log")
            logging.getLogger("a.module").info("working")
            raise message
        return main

    with kept_logging():
        with pytest.raises(SystemExit):
            exit_on_user_error(fail(UserError("the data folder is missing")))
        with pytest.raises(RuntimeError):
            exit_on_user_error(fail(RuntimeError("a bug")))
    log = (tmp_path / "run.log").read_text()
    first, second = log.split("\n\n")                                       # a blank line between the runs
    assert "======== new run (pid" in first and first.rstrip().endswith("error: the data folder is missing")
    assert "earlier runs above in" in second.splitlines()[0]
    assert "crashed: RuntimeError: a bug" in second and "Traceback (most recent call last)" in second
    assert capsys.readouterr().err.count("error: the data folder is missing") == 1   # once on the console
