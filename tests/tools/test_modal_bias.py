"""tools/modal_bias.py on the tiny Synthetic tree: the report's figures against independent computations
from the model's test features."""

import json
import os

import numpy as np
import pytest
import torch

from config import load_config
from datasets import make_dataset, make_test_loader
from model import load_model, read_checkpoint
from processor.device import BatchToDevice
from tools import modal_bias

MODS = ["RGB", "NI", "TI"]
PAIRS = [("RGB", "NI"), ("RGB", "TI"), ("NI", "TI")]


def _gap(blocks: dict[str, np.ndarray]) -> dict:
    mu = np.concatenate(list(blocks.values())).mean(0)
    cen = {m: (b - mu) / np.linalg.norm(b - mu, axis=1, keepdims=True) for m, b in blocks.items()}
    sample = {f"{a}-{b}": float(np.mean(1 - np.sum(cen[a] * cen[b], axis=1))) for a, b in PAIRS}
    spread = np.sqrt(np.mean([np.sum((b - b.mean(0)) ** 2, axis=1).mean() for b in blocks.values()]))
    centroid = {f"{a}-{b}": float(np.linalg.norm(blocks[a].mean(0) - blocks[b].mean(0)) / spread) for a, b in PAIRS}
    return {"sample": sample, "centroid": centroid}


def test_modal_bias_report(trained_run, tmp_path, capsys):
    config = os.path.join(trained_run, "config.yaml")
    weight = os.path.join(trained_run, "model_final.pth")
    modal_bias.main(["--out", str(tmp_path), "--config_file", config, "TEST.WEIGHT", weight])
    with open(tmp_path / "modal_bias.json") as f:
        report = json.load(f)
    assert "Modality gap of the class tokens" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "modal_bias.md")

    assert set(report["retrieval"]) == {"RGB+NI+TI", "NI+TI", "RGB+TI", "RGB+NI", "TI", "NI", "RGB"}
    summary = report["summary"]
    assert summary["fused"] == report["retrieval"]["RGB+NI+TI"]["mAP"]
    assert summary["single"] == {m: report["retrieval"][m]["mAP"] for m in MODS}

    # independent: the test features cat(ori, heat_cls, heat_pat) of every test sample, from model(batch)
    cfg = load_config(config)
    model = load_model(cfg, read_checkpoint(weight)).eval()
    dataset = make_dataset("Synthetic", cfg.DATASETS.ROOT_DIR)
    to_device = BatchToDevice(cfg, torch.device("cpu"))
    with torch.no_grad():
        feats = torch.cat([model(to_device(b)) for b in make_test_loader(cfg, dataset, dataset.query)])
    feats = feats.double().numpy()
    C = feats.shape[1] // 9
    parts = {name: feats[:, i * 3 * C:(i + 1) * 3 * C] for i, name in enumerate(["ori", "heat_cls", "heat_pat"])}
    blocks = {name: {m: p[:, j * C:(j + 1) * C] for j, m in enumerate(MODS)} for name, p in parts.items()}

    stages = report["gap"]["class token"]
    assert list(stages) == ["backbone", "cycle 1", "cycle 2", "cycle 3"]
    for stage, name in (("backbone", "ori"), ("cycle 3", "heat_cls")):
        expected = _gap(blocks[name])
        for kind in ("sample", "centroid"):
            for pair, value in expected[kind].items():
                assert stages[stage][kind][pair] == pytest.approx(value, rel=1e-3)
            assert stages[stage][kind]["mean"] == pytest.approx(np.mean(list(expected[kind].values())), rel=1e-3)
    expected = _gap(blocks["heat_pat"])
    for pair, value in expected["sample"].items():
        assert report["gap"]["patch mean"]["heat"]["sample"][pair] == pytest.approx(value, rel=1e-3)

    grouped = feats.reshape(len(feats), 3, 3, C)                       # (N, part, modality, C)
    energy = {m: np.sum(grouped[:, :, j] ** 2, axis=(1, 2)) for j, m in enumerate(MODS)}
    unit = grouped / np.linalg.norm(feats, axis=1)[:, None, None, None]  # TEST.FEAT_NORM
    variance = {m: unit[:, :, j].var(axis=0).sum() for j, m in enumerate(MODS)}
    for m in MODS:
        assert report["shares"]["energy"]["test"][m] == pytest.approx(
            float(np.mean(energy[m] / sum(energy.values()))), rel=1e-5)
        assert report["shares"]["variance"]["test"][m] == pytest.approx(
            float(variance[m] / sum(variance.values())), rel=1e-4)
    for kind in ("energy", "variance"):
        for name in ("ori", "heat_cls", "heat_pat", "test"):
            assert sum(report["shares"][kind][name].values()) == pytest.approx(1.0)

    edges = report["heat"]["edges"]
    assert set(edges) == {"RGB->NI", "NI->TI", "TI->RGB"}
    for stats in edges.values():
        per_cycle = [stats[f"cycle {c}"]["gate"] for c in (1, 2, 3)]
        assert stats["gate"] == pytest.approx(np.mean(per_cycle))
        assert 0 < stats["spatial_gate"] < 1 and stats["kappa"] > 0
    theta = read_checkpoint(weight).state["heat.conductivity.NI"].double().numpy()   # k_t = softplus(theta_t)
    assert report["heat"]["parameters"]["conductivity/NI"] == pytest.approx(float(np.log1p(np.exp(theta)).mean()),
                                                                           rel=1e-5)


def test_missing_weight_is_a_user_error(trained_run, capsys):
    with pytest.raises(SystemExit) as exc:
        modal_bias.main(["--config_file", os.path.join(trained_run, "config.yaml"), "TEST.WEIGHT", "nowhere.pth"])
    assert exc.value.code == 2
    assert "nowhere.pth" in capsys.readouterr().err
