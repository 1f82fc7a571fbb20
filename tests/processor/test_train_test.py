import json
import os

import pytest
import torch

from datasets import make_dataset, make_test_loader, make_train_loader
from loss import make_loss
from model import make_model
from processor import evaluation, tester
from processor.device import BatchToDevice
from processor.evaluation import extract_features
from solver import make_optimizer
from tests.conftest import tiny_config


def test_a_short_training_run_lowers_the_loss(tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, str(tmp_path), "SOLVER.BASE_LR", "0.001", "INPUT.RE_PROB", "0.0")
    torch.manual_seed(0)
    dataset = make_dataset("Synthetic", tiny_root)
    model = make_model(cfg, dataset.num_train_pids).train()
    loss_fn, optimizer = make_loss(cfg, dataset.num_train_pids), make_optimizer(cfg, model)
    batch = BatchToDevice(cfg, torch.device("cpu"))(next(iter(make_train_loader(cfg, dataset))))
    history = []
    for _ in range(8):
        losses = loss_fn(model(batch), batch["pid"])
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert history[-1] < 0.8 * history[0]


def test_train_then_test_reproduces_the_result(tiny_root, trained_run, tmp_path):
    out = trained_run
    with open(os.path.join(out, "test_results.json")) as f:
        saved = json.load(f)
    assert saved["epoch"] == 2 and saved["weight"] == os.path.join(out, "model_final.pth")
    assert {"mAP", "mINP", "Rank-1", "Rank-5", "Rank-10"} <= set(saved)
    assert all(0 <= saved[k] <= 100 for k in ("mAP", "mINP", "Rank-1", "Rank-5", "Rank-10"))

    weight = os.path.join(out, "model_final.pth")
    again = tester.test(tiny_config(tiny_root, str(tmp_path / "eval"), "TEST.WEIGHT", weight))
    for key in ("mAP", "mINP", "Rank-1", "Rank-5", "Rank-10"):
        assert again[key] == pytest.approx(saved[key], abs=1e-6), key

    sweep = tester.test(tiny_config(tiny_root, str(tmp_path / "sweep"), "TEST.WEIGHT", weight, "TEST.MISS", "all"))
    assert set(sweep["protocols"]) == {"zero", "drop"}
    for protocol, figures in sweep["protocols"].items():
        assert set(figures["settings"]) == {"none", "r", "n", "t", "rn", "rt", "nt"}
        assert figures["settings"]["none"]["mAP"] == pytest.approx(saved["mAP"], abs=1e-6)
        missing = [v["mAP"] for k, v in figures["settings"].items() if k != "none"]
        assert figures["average_missing"]["mAP"] == pytest.approx(sum(missing) / 6)
        assert figures["retention"] == pytest.approx(100 * sum(missing) / 6 / saved["mAP"])
        single = tester.test(tiny_config(tiny_root, str(tmp_path / protocol), "TEST.WEIGHT", weight,
                                         "TEST.MISS", "rn", "TEST.MISS_PROTOCOL", protocol))
        assert single["protocol"] == protocol
        assert single["mAP"] == pytest.approx(figures["settings"]["rn"]["mAP"], abs=1e-4)
    with open(os.path.join(tmp_path, "sweep", "test.log")) as f:
        log = f.read()
    assert "protocol zero: a missing modality's image is zeros" in log and "protocol drop:" in log


def test_missing_modality_features_equal_zeroed_images(tiny_root, tmp_path):
    cfg = tiny_config(tiny_root, str(tmp_path))
    dataset = make_dataset("Synthetic", tiny_root)
    model = make_model(cfg, dataset.num_train_pids).eval()
    loader = make_test_loader(cfg, dataset, dataset.query[:20])
    to_device = BatchToDevice(cfg, torch.device("cpu"))
    feats = extract_features(model, loader, to_device, ["none", "t", "rn"], progress=False)
    batch = to_device(next(iter(make_test_loader(cfg, dataset, dataset.query[:20]))))
    with torch.no_grad():
        torch.testing.assert_close(feats["none"], model(batch), atol=1e-5, rtol=1e-5)
        for setting, missing in (("t", ["TI"]), ("rn", ["RGB", "NI"])):
            zeroed = {**batch, **{m: torch.zeros_like(batch[m]) for m in missing}}
            torch.testing.assert_close(feats[setting], model(zeroed), atol=1e-5, rtol=1e-5)


def test_evaluation_runs_in_float32_whatever_the_training_precision(tiny_root, tmp_path):
    dataset = make_dataset("Synthetic", tiny_root)
    torch.manual_seed(0)
    model = make_model(tiny_config(tiny_root, str(tmp_path)), dataset.num_train_pids)
    results = {amp: evaluation.evaluate(tiny_config(tiny_root, str(tmp_path), "SOLVER.AMP", amp), model,
                                                 dataset, torch.device("cpu"), progress=False)["none"]
               for amp in ("off", "bf16")}
    assert results["off"].mAP == results["bf16"].mAP
