"""torchrun on CPU (gloo): two processes train, one writes; the replicas stay identical."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO, tiny_config


def test_torchrun_two_processes_on_cpu(tiny_root, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(tiny_root, str(out), "INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.SIZE_TEST", "[32, 16]",
                      "INPUT.PADDING", "2", "SOLVER.MAX_EPOCHS", "2", "SOLVER.EVAL_PERIOD", "1",
                      "MODEL.DROP_PATH", "0.1")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(cfg.dump())
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "train.py", "--config_file", str(config_file)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 alone logs, evaluates and saves
    assert proc.stdout.count("running with config") == 1
    assert proc.stdout.count("final epoch 2") == 1 and proc.stdout.count("epoch 1: mAP") == 1
    assert "device cpu, 2 process(es)" in proc.stdout
    assert "parameters identical on all 2 processes" in proc.stdout
    results = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files if f == "test_results.json"]
    assert results == [str(out / "test_results.json")]
    with open(results[0]) as f:
        assert json.load(f)["epoch"] == 2
    assert {"last.pth", "model_final.pth", "train.log", "config.yaml"} <= set(os.listdir(out))
    assert len(os.listdir(out / "tensorboard")) == 1
    with open(out / "train.log") as f:
        assert f.read().count("running with config") == 1
