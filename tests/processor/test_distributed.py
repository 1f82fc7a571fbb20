"""torchrun on CPU (gloo): two processes train, one writes; the replicas stay identical; one step equals one
process on the global batch; the no-heat ablation trains; evaluation is shared between the processes."""

import datetime
import json
import os
import subprocess
import sys
import time

import pytest

from config import load_config
from processor import tester
from tests.conftest import REPO, kept_logging, tiny_config


def test_torchrun_two_processes_on_cpu(tiny_root, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(tiny_root, str(out), "INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.SIZE_TEST", "[32, 16]",
                      "INPUT.PADDING", "2", "SOLVER.MAX_EPOCHS", "2", "SOLVER.EVAL_PERIOD", "1",
                      "MODEL.DROP_PATH", "0.1")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(cfg.dump())
    checks = tmp_path / "checks"
    checks.mkdir()
    # one launch: tests/processor/ddp_checks.py runs its checks, then train() as train.py does
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "tests.processor.ddp_checks", str(config_file), str(checks)], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(checks / "ddp_checks.json") as f:
        found = json.load(f)
    step = found["step"]   # 2 processes x 2 identities = 1 process x 4 identities, batch norms aside
    assert step["same_batch"] and step["updated"] > 0.9 * step["parameters"]
    assert step["triplet"] == pytest.approx(step["single_triplet"], rel=1e-5)
    assert step["loss"] == pytest.approx(step["single_loss"], rel=1e-5)
    assert step["worst_update_difference"] < 1e-3   # 0.93 when each process mines its own share
    assert found["no_heat"] == {"operators": 0, "unchanged": []}
    assert found["one_identity"].startswith("SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE = 8 / 4 = 2 identities "
                                            "per batch cannot give each of 2 processes the same number, at least 2")

    # rank 0 alone logs, evaluates and saves
    assert proc.stdout.count("running with config") == 1
    assert proc.stdout.count("final epoch 2") == 1 and proc.stdout.count("epoch 1: mAP") == 1
    assert "device cpu, 2 process(es)" in proc.stdout
    assert proc.stdout.count(" features in ") == 2 and "(2 process(es))" in proc.stdout  # shared encoding
    assert "parameters identical on all 2 processes" in proc.stdout
    results = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files if f == "test_results.json"]
    assert results == [str(out / "test_results.json")]
    with open(results[0]) as f:
        record = json.load(f)
    assert record["epoch"] == 2
    # the shards gathered in order: one process evaluating the final weights finds the same figures
    with kept_logging():
        alone = tester.test(load_config(str(config_file), ["OUTPUT_DIR", str(tmp_path / "alone"),
                                                          "TEST.WEIGHT", str(out / "model_final.pth")]))
    for key in ("mAP", "mINP", "Rank-1", "Rank-5"):
        assert alone[key] == pytest.approx(record[key], abs=1e-6), key
    assert {"last.pth", "model_final.pth", "train.log", "config.yaml"} <= set(os.listdir(out))
    assert len(os.listdir(out / "tensorboard")) == 1
    with open(out / "train.log") as f:
        assert f.read().count("running with config") == 1


def _worker(rank: int, init_file: str, results) -> None:
    import torch
    import torch.distributed as dist

    from processor.distributed import DistInfo, MainProcessFailed, main_process_first, run_on_main

    # a collective that never completes raises after the timeout instead of hanging the suite
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
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
        # forked: the two processes start with torch already imported (a spawned interpreter pays ~3.5 s of CPU)
        context = mp.start_processes(_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=False,
                                     start_method="fork")
        deadline = time.monotonic() + 300
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail("the two processes did not finish within 300 s")
        assert results[0] == ["value", "ValueError", "ValueError"]
        assert results[1] == [None, "MainProcessFailed", "MainProcessFailed"]
