"""``test.py`` on checkpoints that hold a whole model: the authors' released format (ViT-B/16, stencil operator)
gives the released model's features, and no pretrained weights are downloaded for it or for ours."""

import json
import os
import urllib.request

import torch
import torch.nn.functional as F

from datasets import make_dataset, make_test_loader
from datasets.synthetic import generate
from model import checkpoint_record, make_model
from processor import evaluation, tester
from processor.cli import run_cli
from processor.device import BatchToDevice
from tests.conftest import REPO, tiny_config
from tests.model.released_reference import released_features, released_state_dict
from utils.files import atomic_save
from utils.metrics import evaluate_rank


def _no_network(*args, **kwargs):
    raise AssertionError("test.py tried to download pretrained weights")


def _small_tree(root: str) -> None:
    """Three test samples (9 ViT-B/16 images): the first id at cameras 1 and 2, the second at camera 1."""
    generate(os.path.join(root, "Synthetic"), train_ids=2, test_ids=2, shots_per_camera=1)
    for modality in ("RGB", "NI", "TI"):
        folder = os.path.join(root, "Synthetic", "test", modality)
        for name in sorted(os.listdir(folder)):
            pid, cam = int(name[:6]), int(name.split("_cam")[1][0])
            if not (cam == 1 or (pid == 3 and cam == 2)):
                os.remove(os.path.join(folder, name))


def test_test_py_gives_the_released_models_features(tmp_path, monkeypatch):
    root, out, cache = str(tmp_path / "data"), str(tmp_path / "out"), str(tmp_path / "cache")
    _small_tree(root)
    state, visual = released_state_dict(width=768, layers=12, heads=12, patch=16, grid=(16, 8), num_classes=2,
                                        vehicle=False)
    weight = str(tmp_path / "817.pth")
    torch.save(state, weight)

    captured = {}
    extract = evaluation.extract_views

    def capture(*args, **kwargs):
        features = extract(*args, **kwargs)
        captured.update({view.setting: f for view, f in features.items()})
        return features

    monkeypatch.setattr(evaluation, "extract_views", capture)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    opts = ["MODEL.NAME", "ViT-B-16", "INPUT.SIZE_TRAIN", "[256, 128]", "INPUT.SIZE_TEST", "[256, 128]",
            "MODEL.HEAT.DIFFUSION", "stencil", "MODEL.PRETRAIN_PATH", "openai", "MODEL.PRETRAIN_CACHE", cache,
            "DATALOADER.CACHE", "False", "TEST.WEIGHT", weight]
    cfg = tiny_config(root, out, *opts)
    argv = ["--config_file", os.path.join(REPO, "configs", "Synthetic", "MHCF.yml"), "DATASETS.ROOT_DIR", root,
            "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", *opts]
    run_cli(tester.test, "test.py", argv)
    assert not os.path.exists(cache)
    with open(os.path.join(out, "test_results.json")) as f:
        record = json.load(f)

    dataset = make_dataset("Synthetic", root)
    assert len(dataset.query) == 3
    batch = BatchToDevice(cfg, torch.device("cpu"))(next(iter(make_test_loader(cfg, dataset, dataset.query))))
    expected = released_features(state, visual, batch)
    ours = captured["none"]
    assert ours.shape == expected.shape == (3, 6912)
    assert ((ours - expected).norm() / expected.norm()).item() < 1e-5

    qf = F.normalize(expected, dim=1)
    result = evaluate_rank((2 - 2 * qf @ qf.t()).numpy(), **dataset.eval_metadata(dataset.query, dataset.query))
    assert record["mAP"] == 100 * result.mAP and record["Rank-1"] == 100 * result.cmc[0]


def test_test_py_never_downloads_for_our_own_checkpoint(tiny_root, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_root, str(tmp_path / "out"))
    dataset = make_dataset("Synthetic", tiny_root)
    weight = str(tmp_path / "model_final.pth")
    atomic_save(checkpoint_record(make_model(cfg, dataset.num_train_pids), dataset.num_train_pids, cfg.dump(), 1),
                weight)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    cache = str(tmp_path / "cache")
    # "openai" for ViT-Mini-8 would be a UserError if test.py tried to fetch pretrained weights at all
    record = tester.test(tiny_config(tiny_root, str(tmp_path / "eval"), "MODEL.PRETRAIN_PATH", "openai",
                                        "MODEL.PRETRAIN_CACHE", cache, "TEST.WEIGHT", weight))
    assert 0 <= record["mAP"] <= 100
    assert not os.path.exists(cache)
