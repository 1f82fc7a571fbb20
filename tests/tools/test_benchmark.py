"""Smoke test of ``python -m tools.benchmark``: one step of the Synthetic config; every figure positive and finite."""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_benchmark_runs_one_step_of_the_synthetic_config(tiny_root, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "tools.benchmark",
           "--config_file", os.path.join(REPO, "configs", "Synthetic", "MHCF.yml"), "--batch", "8",
           "--test_batch", "4", "--iters", "1", "--warmup", "0", "--matmul_size", "256", "--data_samples", "4",
           "--threads", "1", "--epoch", "--json", str(out), "DATASETS.ROOT_DIR", tiny_root, "MODEL.DEVICE", "cpu",
           "DATALOADER.NUM_WORKERS", "0"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("machine fp32 matmul rate, the precision of the training step", "training step",
                 "GFLOP/s sustained", "inference batch", "peak memory", "input pipeline", "DATALOADER.NUM_WORKERS",
                 "training epoch (Trainer.train_epoch, 2 iterations of 32 samples"):
        assert line in result.stdout, line
    report = json.loads(out.read_text())
    assert report["batch"] == 8 and report["threads"] == 1
    train, infer = report["train_step"], report["inference"]
    assert train["precision"] == infer["precision"] == "fp32"
    assert all(_positive(v) for loop in (train, infer) for v in loop["matmul_gflops"].values())
    for key in ("median", "min", "max", "flops", "samples_per_s", "images_per_s", "gflops", "fraction_of_matmul",
                "matmul_alongside_gflops", "fraction_of_best_matmul"):
        assert _positive(train[key]) and _positive(infer[key]), key
    for loop in (train, infer):  # the yardsticks: the matmul rate measured alongside, and the run's best burst
        assert loop["fraction_of_matmul"] == pytest.approx(loop["gflops"] / loop["matmul_alongside_gflops"])
        assert loop["fraction_of_best_matmul"] == pytest.approx(loop["gflops"] / loop["matmul_best_gflops"])
        assert loop["matmul_best_gflops"] >= max(loop["matmul_alongside_gflops"], *loop["matmul_gflops"].values())
    assert train["n"] == 1 and train["images_per_s"] == pytest.approx(3 * train["samples_per_s"])
    assert train["gflops"] * 1e9 * train["median"] == pytest.approx(train["flops"])
    assert infer["flops"] < train["flops"] * 4 / 8  # inference: forward of 4 samples, less than 8-sample training
    parts = report["model"]
    assert set(parts) == {"backbone", "heat fusion", "heads"}
    assert all(_positive(p["params"]) and _positive(p["flops"]) for p in parts.values())
    memory = report["memory"]["step"]
    assert _positive(memory["peak_mb"]) and memory["peak_mb"] >= memory["model_mb"] > 0
    data = report["input"]
    assert data["samples"] == 4 and all(_positive(data[k]) for k in ("per_worker", "per_worker_cached", "decode_only"))
    assert data["workers"] >= 1 and data["workers_cached"] >= 1
    assert "baseline" not in report
    epoch = report["epoch"]   # the real trainer's epoch: 64 training samples in batches of 32
    assert epoch["iterations"] == 2 and epoch["seconds"] == pytest.approx(2 * epoch["per_iteration"])
    assert epoch["samples_per_s"] == pytest.approx(64 / epoch["seconds"]) and _positive(epoch["step_alone"])


def test_matmul_rate_is_measured_between_the_timed_iterations():
    import torch

    from tools.benchmark import AlongsideMatmul, Timer, repeat

    order = []
    timer = Timer(torch.device("cpu"))
    alongside = AlongsideMatmul(timer, lambda: order.append("matmul"), 64)
    times = repeat(timer, lambda: order.append("step"), warmup=2, iters=3, between=alongside)
    assert len(times) == 3 and len(alongside.rates) == 3
    # warm-up untimed and without bursts; then each timed step is followed by a burst of 3 products
    assert order == ["step"] * 2 + (["step"] + ["matmul"] * 3) * 3
    assert alongside.median() == sorted(alongside.rates)[1] > 0
