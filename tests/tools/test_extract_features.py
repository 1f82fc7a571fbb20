"""tools/extract_features.py: features of a folder holding two of the three modalities (and one sample with a
single one) equal test.py's features of the same samples under the matching TEST.MISS setting; the Python entry
point gives the same."""

import csv
import json
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F

from config import load_config
from datasets import make_dataset, make_test_loader
from model import load_model, read_checkpoint
from processor.device import BatchToDevice
from processor.evaluation import extract_features
from tools import extract_features as tool


def test_features_of_a_folder_with_two_of_three_modalities(tiny_root, trained_run, tmp_path, capsys):
    config, weight = os.path.join(trained_run, "config.yaml"), os.path.join(trained_run, "model_final.pth")
    dataset = make_dataset("Synthetic", tiny_root)
    samples = dataset.query[:6]
    images = tmp_path / "my_images"
    for m in ("RGB", "NI"):                                   # no TI/ folder at all
        (images / m).mkdir(parents=True)
        for s in samples[:5] if m == "NI" else samples:        # the last sample has RGB only
            shutil.copy(s.paths[m], images / m / os.path.basename(s.paths[m]))
    out = tmp_path / "features"
    tool.main(["--images", str(images), "--out", str(out), "--config_file", config, "TEST.WEIGHT", weight])
    assert "6 samples (5 RGB+NI, 1 RGB) -> 1152-d features" in capsys.readouterr().out

    features = np.load(out / "features.npy")
    with open(out / "index.csv") as f:
        index = list(csv.DictReader(f))
    with open(out / "features.json") as f:
        meta = json.load(f)
    assert features.shape == (6, 1152) and features.dtype == np.float32
    assert [r["name"] for r in index] == [os.path.basename(s.paths["RGB"]) for s in samples]
    assert [r["modalities"] for r in index] == ["RGB+NI"] * 5 + ["RGB"]
    assert index[5]["NI"] == "" and index[0]["TI"] == "" and index[0]["NI"] == str(images / "NI" / index[0]["name"])
    assert (meta["weight"], meta["dim"], meta["normalised"], meta["subsets"]) == (weight, 1152, True,
                                                                                {"RGB+NI": 5, "RGB": 1})

    # the evaluation's own path: the same samples of the dataset, TI missing ("t") / NI and TI missing ("nt")
    cfg = load_config(config, ["DATASETS.ROOT_DIR", tiny_root])
    model = load_model(cfg, read_checkpoint(weight)).eval()
    expected = extract_features(model, make_test_loader(cfg, dataset, samples), BatchToDevice(cfg, torch.device("cpu")),
                                ["t", "nt"], progress=False)
    np.testing.assert_allclose(features[:5], F.normalize(expected["t"][:5], dim=1).numpy(), atol=1e-5)
    np.testing.assert_allclose(features[5], F.normalize(expected["nt"][5], dim=0).numpy(), atol=1e-5)

    # the Python entry point
    extractor = tool.FeatureExtractor(config, weight, device="cpu")
    direct = extractor({"RGB": [samples[5].paths["RGB"], samples[0].paths["RGB"]],
                        "NI": [None, samples[0].paths["NI"]]})
    np.testing.assert_allclose(direct.numpy(), features[[5, 0]], atol=1e-6)
