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


def _worker(rank: int, init_file: str, results) -> None:
    import torch
    import torch.distributed as dist

    from processor.distributed import DistInfo, MainProcessFailed, main_process_first, run_on_main

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    info = DistInfo(rank, 2, rank, torch.device("cpu"))
    outcome = []
    outcome.append(run_on_main(info, lambda: "value"))

    def fail():
        raise ValueError("evaluation failed")

    for block in ("run_on_main", "main_process_first"):
        try:
            if block == "run_on_main":
                run_on_main(info, fail)
            else:
                with main_process_first(info):
                    if info.is_main:
                        fail()
            outcome.append("no error")
        except (ValueError, MainProcessFailed) as exc:
            outcome.append(type(exc).__name__)
    results[rank] = outcome
    dist.destroy_process_group()


def test_a_failure_on_the_main_process_stops_every_process(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
        assert results[0] == ["value", "ValueError", "ValueError"]
        assert results[1] == [None, "MainProcessFailed", "MainProcessFailed"]
